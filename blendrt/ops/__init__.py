"""Attention over the shared page pool, grouped by role:

attention.py        the backend interface and the per-step metadata backends read
registry.py         backend names -> backends (what EngineConfig.attention_backend names)
reference.py        the torch reference (ground truth of every kernel test) as a backend
torch_attention.py  the portable torch path (padded decode, SDPA prefill): any device
cpu/                the C++ core's CPU kernels, their launchers, the CPU backend
triton/             the Triton kernels (CUDA), their launchers, the Triton backend
aot.py              ahead-of-time compiles for sm_90/sm_80 (a build tool: nothing at
                    run time imports it)
"""
