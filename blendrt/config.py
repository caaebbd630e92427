"""EngineConfig: how the engine sizes the shared pool and batches work. The bottom layer:
it imports nothing from the package."""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: The attention backends a config may name (blendrt.ops.registry maps each to its class;
#: None picks by device).
ATTENTION_BACKENDS = ("torch", "triton", "reference")
#: How the pool may store K/V: the model's dtype, or one byte per element with a scale.
KV_CACHE_DTYPES = ("auto", "int8", "fp8_e4m3")


@dataclass
class EngineConfig:
    device: str | None = None  # None: "cuda" when available, else "cpu"
    dtype: str | None = None  # None: float32 on CPU, the checkpoint's half type on CUDA
    # Pool size: at most one of num_pages, kv_cache_bytes, gpu_memory_utilization (CUDA, as
    # in vLLM: the fraction of the device's total memory the blend may use, weights and
    # activations included; the pool gets the rest). None everywhere: gpu_memory_utilization
    # 0.9 on CUDA, 256 MiB on CPU.
    num_pages: int | None = None
    kv_cache_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    page_bytes: int | None = None  # None: the smallest giving every member min_tokens_per_page
    min_tokens_per_page: int = 16
    # "shared": one pool for all members (blendrt); "static": the same bytes split equally,
    # one part per member (what separate servers would get; a benchmark baseline).
    pool_partition: str = "shared"
    # How the pool stores K/V: "auto" (the model dtype), or "int8" / "fp8_e4m3" with a float16
    # scale per token and head (blendrt/ops/kv_quant.py): about twice the tokens per byte.
    kv_cache_dtype: str = "auto"
    enable_prefix_caching: bool = True
    max_num_batched_tokens: int = 2048  # per step, across all members
    max_num_seqs: int = 256  # running requests
    max_model_len: int | None = None  # caps every member's context
    attention_backend: str | None = None  # "torch" | "triton" | "reference" | None (by device)

    def __post_init__(self) -> None:
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available")
        sizes = [self.num_pages, self.kv_cache_bytes, self.gpu_memory_utilization]
        if sum(s is not None for s in sizes) > 1:
            raise ValueError(
                "give at most one of num_pages, kv_cache_bytes, gpu_memory_utilization"
            )
        positive = {
            "num_pages": self.num_pages,
            "kv_cache_bytes": self.kv_cache_bytes,
            "page_bytes": self.page_bytes,
            "min_tokens_per_page": self.min_tokens_per_page,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_num_seqs": self.max_num_seqs,
            "max_model_len": self.max_model_len,
        }
        for name, value in positive.items():
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        fraction = self.gpu_memory_utilization
        if fraction is not None and not (isinstance(fraction, float | int) and 0 < fraction <= 1):
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {fraction!r}")
        if fraction is not None and torch.device(self.device).type != "cuda":
            raise ValueError(
                "gpu_memory_utilization sizes a CUDA pool; on the CPU give num_pages or "
                "kv_cache_bytes"
            )
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                f"got {self.kv_cache_dtype!r}"
            )
        if self.pool_partition not in ("shared", "static"):
            raise ValueError(
                f"pool_partition must be 'shared' or 'static', got {self.pool_partition!r}"
            )
        if self.attention_backend not in (None, *ATTENTION_BACKENDS):
            raise ValueError(
                f"attention_backend must be one of {', '.join(map(repr, ATTENTION_BACKENDS))} "
                "or None, "
                f"got {self.attention_backend!r}"
            )

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)
