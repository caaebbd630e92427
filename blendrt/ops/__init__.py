"""Attention over the shared page pool: the backend interface, the torch reference backend
(CPU, and the ground truth for tests), and the Triton kernels (CUDA)."""
