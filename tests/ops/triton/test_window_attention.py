"""Sliding-window and soft-capped attention in the Triton kernels (decode, extend, and the
backend over both), unquantized and over int8 / fp8_e4m3 caches, against a dense masked
softmax (tests/ops/window_cases.py).

Pages wholly before a sequence's first visible key are released as the engine releases them:
-1 in the block table and NaN in the pool, so a kernel that starts its key loop too early
reads a poisoned page or a -1 entry. Without a GPU the kernels run in Triton's interpreter
(tests/conftest.py): shapes stay tiny, and bf16 (wrong in the interpreter) runs on CUDA only.
"""

from __future__ import annotations

import pytest
import torch
from ops.window_cases import WINDOW_BATCHES, make_window_case

from blendrt.ops.triton import decode_attention as da
from blendrt.ops.triton.backend import TritonBackend
from blendrt.ops.triton.extend_attention import extend_attention, extend_config

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA_ONLY = pytest.mark.skipif(DEVICE.type == "cpu", reason="bf16 is wrong in the interpreter")

#: (cached prefix, new tokens): with float32's 32-key tiles and a window of 20, programs
#: whose window edge cuts tiles, tiles wholly visible, the diagonal, a chunk after a cached
#: prefix the window cuts into, a prefill from scratch longer than the window, decode rows.
EXTEND = [(70, 40), (0, 45), (5, 3), (90, 1), (33, 1)]
#: Decode rows: within one page, ending mid-page, windows ending on page and tile bounds.
DECODE = [(0, 1), (9, 1), (149, 1), (299, 1), (64, 1)]


def _extend(case, **kwargs) -> torch.Tensor:
    meta = case.meta
    return extend_attention(
        case.q, case.k_cache, case.v_cache, meta.block_tables, meta.cu_seqlens_q,
        meta.context_lens, case.scale, max_query_len=meta.max_query_len, **case.scales,
        window=case.window, softcap=case.softcap, **kwargs,
    )  # fmt: skip


def _decode(case, **kwargs) -> torch.Tensor:
    meta = case.meta
    return da.decode_attention(
        case.q, case.k_cache, case.v_cache, meta.block_tables, meta.context_lens, case.scale,
        max_context_len=meta.max_context_len, **case.scales, window=case.window,
        softcap=case.softcap, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("num_kv_heads", "group", "head_dim", "dtype"),
    [
        (1, 1, 16, torch.float32),
        (2, 2, 16, torch.float32),
        (1, 4, 80, torch.float32),
        (1, 2, 96, torch.float16),
        pytest.param(2, 4, 128, torch.bfloat16, marks=CUDA_ONLY),
    ],
)
@pytest.mark.parametrize(("window", "softcap"), [(20, 0.0), (20, 30.0), (1000, 50.0), (1, 0.0)])
def test_extend(num_kv_heads, group, head_dim, dtype, window, softcap) -> None:
    case = make_window_case(
        EXTEND, window=window, softcap=softcap, num_kv_heads=num_kv_heads, group=group,
        head_dim=head_dim, dtype=dtype, tokens_per_page=5, device=DEVICE, seed=group + window,
    )  # fmt: skip
    case.check(_extend(case))


def test_extend_tiles_cover_every_band() -> None:
    """float32 extend tiles: 32 rows and keys, so EXTEND's windows of 20 start mid-tile."""
    cfg = extend_config(16, 1, torch.float32)
    assert cfg["BLOCK_N"] == cfg["TOKENS_M"] == 32


@pytest.mark.parametrize(
    ("num_kv_heads", "group", "head_dim", "dtype"),
    [
        (1, 1, 16, torch.float32),
        (2, 2, 80, torch.float32),
        (1, 4, 96, torch.float16),
        pytest.param(2, 4, 128, torch.bfloat16, marks=CUDA_ONLY),
    ],
)
@pytest.mark.parametrize(("window", "softcap"), [(70, 0.0), (70, 30.0), (1000, 50.0), (1, 0.0)])
@pytest.mark.parametrize("num_splits", [None, 3])
def test_decode(num_kv_heads, group, head_dim, dtype, window, softcap, num_splits) -> None:
    case = make_window_case(
        DECODE, window=window, softcap=softcap, num_kv_heads=num_kv_heads, group=group,
        head_dim=head_dim, dtype=dtype, tokens_per_page=8, device=DEVICE, seed=group + window,
    )  # fmt: skip
    case.check(_decode(case, num_splits=num_splits))


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_quantized_caches(kv_dtype: str, dtype: torch.dtype) -> None:
    for kernel, seqs, window in ((_extend, EXTEND, 20), (_decode, DECODE, 70)):
        case = make_window_case(
            seqs, window=window, softcap=30.0, num_kv_heads=2, group=2, head_dim=80,
            dtype=dtype, kv_dtype=kv_dtype, tokens_per_page=5, device=DEVICE, seed=3,
        )  # fmt: skip
        # NOTE: the kernels dequantize K/V to q's dtype: float16 rounds them once more,
        # which scores of +-softcap / 2 magnify.
        case.check(kernel(case), tol=2e-2 if dtype == torch.float16 else None)


@pytest.mark.parametrize("kv_dtype", ["auto", "int8"])
@pytest.mark.parametrize("batch", sorted(WINDOW_BATCHES))
def test_backend_stores_then_attends(kv_dtype: str, batch: str) -> None:
    """TritonBackend: decode-only steps through the split kernel, mixed ones through extend."""
    case = make_window_case(
        WINDOW_BATCHES[batch], window=6, softcap=50.0, num_kv_heads=2, group=2, head_dim=16,
        kv_dtype=kv_dtype, store=False, device=DEVICE, seed=8,
    )  # fmt: skip
    out = TritonBackend().forward(
        case.q, case.k, case.v, case.k_cache, case.v_cache, case.meta, case.scale,
        **case.scales, window=6, softcap=50.0,
    )  # fmt: skip
    case.check(out, tol=None if kv_dtype == "auto" else 1e-4)


def test_window_cuts_the_splits(monkeypatch) -> None:
    """The split heuristic counts the window's tokens, not the context's."""
    monkeypatch.setattr(da, "_sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    assert da._num_splits(8, 32768, cuda) > da._num_splits(8, 256, cuda) == 2
    seen = {}
    real = da._num_splits

    def spy(programs, length, device):
        seen["length"] = length
        return real(programs, length, device)

    monkeypatch.setattr(da, "_num_splits", spy)
    case = make_window_case([(299, 1)], window=70, tokens_per_page=8, device=DEVICE)
    case.check(_decode(case))
    assert seen["length"] == 70


def test_bad_options_are_refused() -> None:
    case = make_window_case([(9, 1)], window=4, device=DEVICE)
    with pytest.raises(ValueError, match="window"):
        da.decode_attention(
            case.q, case.k_cache, case.v_cache, case.meta.block_tables, case.meta.context_lens,
            1.0, max_context_len=10, window=-1,
        )  # fmt: skip
    with pytest.raises(ValueError, match="softcap"):
        extend_attention(
            case.q, case.k_cache, case.v_cache, case.meta.block_tables, case.meta.cu_seqlens_q,
            case.meta.context_lens, 1.0, max_query_len=1, softcap=float("inf"),
        )  # fmt: skip
