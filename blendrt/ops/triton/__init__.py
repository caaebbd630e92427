"""Triton paged-attention kernels (store_kv, extend_attention, split-KV decode), one public
launcher per module, and the Triton backend that runs them on CUDA."""
