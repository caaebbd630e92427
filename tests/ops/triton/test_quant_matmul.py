"""quant_matmul_triton against quant_matmul_reference (ops/quant.py), the format's ground truth.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py), so shapes stay
small; it computes bf16 wrongly, so bf16 runs only on a GPU. x is a view into a NaN-filled
buffer (NaN columns past K, a NaN row past T) and every `torch.empty` during a call comes
back NaN-filled (the output, the split-K partial sums), and so does the memory right after
the scales, so a read out of range or an output never written shows up as a non-finite
result. (Rows past T and, for int8, weight bytes past K are read masked to 0: a kernel that
read them anyway would give the same numbers, as each output row depends on its x row only.)

Tolerances, relative to the output's RMS: fp16 1e-2. Its output rounding is 2^-11 (~5e-4)
and the prefill path also rounds each dequantized weight to fp16 (~2^-12 per product, which
averages out over K); a wrong nibble, group, scale or zero point moves outputs by 10-100% of
the RMS. fp32 1e-4: the only differences are the summation order (~1e-6 at K = 256) and, on
a GPU, 3xTF32 dots (~2^-21 per product). bf16 (GPU only) 2e-2: its own rounding is 2^-9.
"""

from __future__ import annotations

import pytest
import torch

from blendrt.ops.quant import QuantizedWeight, QuantScheme, quant_matmul_reference, quantize_rows
from blendrt.ops.triton import quant_matmul as qm
from blendrt.ops.triton import quant_matmul_configs as cfgs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True)
def nan_empty(monkeypatch):
    """Fresh float tensors from torch.empty hold NaN, so unwritten outputs are caught."""
    empty = torch.empty

    def poisoned(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)


def make_weight(n: int, k: int, name: str, dtype: torch.dtype, *, act_order: bool = False,
                seed: int = 0) -> QuantizedWeight:  # fmt: skip
    """A random [n, k] weight quantized as `name`. With zero points each group gets its own
    offset, so the zero points spread over 0..15 instead of sitting near 8."""
    scheme = QuantScheme.parse(name)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    if scheme.zero_point:
        g = scheme.group_size
        w += 3 * torch.randn(n, k // g, generator=gen).repeat_interleave(g, dim=1)
    q, scales, zeros = quantize_rows(w, scheme, dtype)
    if scheme.zero_point:
        assert zeros.unique().numel() >= 8  # offsets really exercise the zero points
    perm = torch.randperm(k, generator=gen).to(torch.int32) if act_order else None
    # NOTE: NaN after the scales' last element: a read past the last group shows.
    tail = torch.full((scales.numel() + 64,), float("nan"), dtype=dtype, device=DEVICE)
    scales = tail[: scales.numel()].copy_(scales.flatten()).view(scales.shape)
    tensors = (t if t is None else t.to(DEVICE) for t in (q, scales, zeros, perm))
    return QuantizedWeight(scheme, *tensors)


def poisoned_x(tokens: int, k: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    """x [tokens, k] with NaN right after each row's K inputs and after its last row."""
    gen = torch.Generator().manual_seed(seed)
    buf = torch.full((tokens + 1, k + 8), float("nan"), dtype=dtype, device=DEVICE)
    x = buf[:tokens, :k]
    x.copy_(torch.randn(tokens, k, generator=gen))
    return x


def check(x: torch.Tensor, qw: QuantizedWeight, **kwargs) -> torch.Tensor:
    out = qm.quant_matmul_triton(x, qw, **kwargs)
    assert out.shape == (x.shape[0], qw.out_features) and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    ref = quant_matmul_reference(x, qw).float()
    tol = TOL[x.dtype]
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * ref.pow(2).mean().sqrt())
    return out


F16, F32, BF16 = torch.float16, torch.float32, torch.bfloat16
CASES = [  # scheme, T, K, N, dtype: T <= 16 runs the decode kernel (T = 1 its GEMV), else GEMM
    ("int8", 1, 256, 96, F16),
    ("int8", 3, 200, 77, F32),  # K tail: 200 is no multiple of BLOCK_K = 128
    ("int8", 16, 256, 40, F16),
    ("int8", 33, 200, 77, F16),
    ("int4-g32", 1, 256, 77, F32),
    ("int4-g32", 16, 128, 96, F16),
    ("int4-g32-zp", 33, 128, 40, F16),
    ("int4-g64", 33, 256, 77, F32),  # 32x32 fp32 tiles: 2 x 3 programs, grouped ordering
    ("int4-g64-zp", 3, 256, 40, F16),
    ("int4-g64-zp", 1, 256, 96, F32),
    ("int4-g128", 16, 256, 77, F32),
    ("int4-g128", 33, 256, 77, F16),
    ("int4-g128-zp", 1, 256, 96, F16),
    ("int4-g128-zp", 130, 256, 96, F16),  # 128x128 tiles, two row tiles
]
if DEVICE == "cuda":  # the interpreter computes bf16 wrongly: only on a GPU
    CASES += [("int8", 1, 256, 96, BF16), ("int4-g64-zp", 16, 256, 77, BF16),
              ("int4-g128", 130, 256, 96, BF16)]  # fmt: skip


@pytest.mark.parametrize(("name", "tokens", "k", "n", "dtype"), CASES)
def test_matches_reference(name, tokens, k, n, dtype) -> None:
    qw = make_weight(n, k, name, dtype, seed=tokens * 7 + n)
    check(poisoned_x(tokens, k, dtype), qw)


@pytest.mark.parametrize(("name", "tokens", "dtype"), [
    ("int4-g128", 1, F16), ("int4-g64-zp", 16, F32), ("int4-g32-zp", 33, F16),
])  # fmt: skip
def test_act_order(name, tokens, dtype) -> None:
    qw = make_weight(77, 256, name, dtype, act_order=True, seed=tokens)
    x = poisoned_x(tokens, 256, dtype)
    out = check(x, qw)
    unpermuted = qm.quant_matmul_triton(x, _replace(qw, perm=None))
    assert not torch.allclose(out.float(), unpermuted.float(), rtol=0.1, atol=0.1)


@pytest.mark.parametrize(("forced", "expected"), [(1, 1), (3, 3), (8, 8), (100, 8)])
def test_forced_splits(forced, expected) -> None:
    """int4-g32 at K = 256: 8 K tiles of 32, split 1 / 3 (3 + 3 + 2 tiles) / 8 ways."""
    qw = make_weight(96, 256, "int4-g32-zp", F16, seed=5)
    cfg = cfgs.decode_config(3, 4, 32, F16)
    assert cfgs.split_k(1, 256 // cfg["BLOCK_K"], 4, forced)[0] == expected
    check(poisoned_x(3, 256, F16), qw, split_k=forced)


def test_split_heuristic() -> None:
    assert cfgs.split_k(128, 32, 132) == (8, 4)  # 4096 x 4096 int4-g128 on an H100
    assert cfgs.split_k(344, 32, 132) == (4, 8)  # 11008 outputs
    assert cfgs.split_k(2000, 32, 132) == (1, 32)  # enough programs already
    assert cfgs.split_k(1, 3, 132) == (2, 2)  # at most cdiv(k_tiles, MIN_TILES_PER_SPLIT)
    for n_blocks, k_tiles in [(1, 1), (3, 7), (128, 86), (10, 1000)]:
        splits, per_split = cfgs.split_k(n_blocks, k_tiles, 132)
        assert (splits - 1) * per_split < k_tiles <= splits * per_split  # none empty


def test_no_tokens() -> None:
    qw = make_weight(40, 128, "int8", F16)
    out = qm.quant_matmul_triton(torch.empty(0, 128, dtype=F16, device=DEVICE), qw)
    assert out.shape == (0, 40)


def _replace(qw: QuantizedWeight, **fields) -> QuantizedWeight:
    return QuantizedWeight(**{**qw.__dict__, **fields})


def test_rejects_bad_inputs(monkeypatch) -> None:
    x = torch.randn(2, 128, dtype=F16, device=DEVICE)
    int4 = make_weight(40, 128, "int4-g64-zp", F16)
    int8 = make_weight(40, 128, "int8", F16)
    g32_k96 = make_weight(40, 96, "int4-g32", F16)
    assert torch.isfinite(qm.quant_matmul_triton(x, int4)).all()  # the unchanged inputs pass
    bad = [
        (x.int(), int4, "2-D fp16/bf16/fp32"),
        (x[None], int4, "2-D fp16/bf16/fp32"),
        (x[:, :64], int4, "inputs"),
        (x.float(), int4, "scales must be"),
        (x, _replace(int4, scales=int4.scales[:, :1]), "scales must be"),
        (x, _replace(int8, scales=int8.scales[:, None]), "scales must be"),
        (x, _replace(int4, qweight=int4.qweight.to(torch.int8)), "qweight must be"),
        (x, _replace(int8, qweight=int8.qweight.view(torch.uint8)), "qweight must be"),
        (x, _replace(int4, zeros=None), "zeros must be"),
        (x, _replace(int4, zeros=int4.zeros.to(torch.int32)), "zeros must be"),
        (x, _replace(int4, perm=torch.arange(128, device=DEVICE)), "perm must be"),
        (x, _replace(int4, perm=torch.arange(64, dtype=torch.int32, device=DEVICE)), "perm"),
        (x, _replace(int4, scales=int4.scales.t().contiguous().t()), "contiguous"),
        (x, _replace(int4, qweight=int4.qweight.t().contiguous().t()), "contiguous"),
        (x, _replace(int4, zeros=int4.zeros.to("meta")), "is on meta"),
        (x[:, :96], _replace(g32_k96, scheme=QuantScheme(4, 64)), "multiple of the group"),
    ]
    for xb, qw, match in bad:
        with pytest.raises(ValueError, match=match):
            qm.quant_matmul_triton(xb, qw)
    monkeypatch.setattr(qm, "_interpreting", lambda: False)
    on_cpu = {f: getattr(int4, f).cpu() for f in ("qweight", "scales", "zeros")}
    with pytest.raises(ValueError, match="CUDA"):
        qm.quant_matmul_triton(x.cpu(), _replace(int4, **on_cpu))


PTR_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
             torch.int8: "*i8", torch.uint8: "*u8"}  # fmt: skip


@pytest.mark.parametrize(("k", "n", "tokens", "name", "dtype"), [
    (4096, 4096, 1, "int4-g128", F16), (11008, 4096, 16, "int8", BF16),
    (11008, 4096, 3, "int4-g128-zp", F16), (4096, 11008, 128, "int4-g32", BF16),
])  # fmt: skip
def test_aot_targets_are_what_the_launcher_launches(monkeypatch, k, n, tokens, name, dtype):
    """On an H100's 132 multiprocessors the launcher runs exactly the kernels, constexprs,
    launch options, pointer types and 16-divisible ints that aot_targets compiles."""
    scheme = QuantScheme.parse(name)
    targets = qm.aot_targets(k, n, tokens, scheme, dtype, capability=90)
    launches = []

    class Recorder:  # stands in for a kernel: records the launch instead of running it
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.fn, args, kwargs))

    for kernel in ("_quant_decode_kernel", "_quant_gemm_kernel", "_split_sum_kernel"):
        monkeypatch.setattr(qm, kernel, Recorder(getattr(qm, kernel)))
    monkeypatch.setattr(cfgs, "sm_count", lambda device: cfgs.SM_COUNTS[90])
    monkeypatch.setattr(cfgs, "capability", lambda device: 90)
    monkeypatch.setattr(qm, "_interpreting", lambda: True)  # CPU tensors pass, also on a GPU
    groups = (n,) if scheme.bits == 8 else (n, k // scheme.group_size)
    qw = QuantizedWeight(
        scheme, torch.zeros(n, k * scheme.bits // 8, dtype=torch.int8 if scheme.bits == 8 else
                            torch.uint8), torch.ones(groups, dtype=dtype),
        None if scheme.bits == 8 else torch.zeros(groups, dtype=torch.uint8),
    )  # fmt: skip
    qm.quant_matmul_triton(torch.zeros(tokens, k, dtype=dtype), qw)
    assert [fn for fn, _, _ in launches] == [t["fn"] for t in targets]
    for (fn, args, kwargs), target in zip(launches, targets, strict=True):
        options = {o: kwargs.pop(o) for o in ("num_warps", "num_stages")}
        assert kwargs == target["constexprs"]
        assert options == {o: target[o] for o in options}
        values = dict(zip(fn.arg_names, args, strict=False))
        types = {a: PTR_TYPES[v.dtype] if torch.is_tensor(v) else "i32" for a, v in values.items()}
        assert types == {a: t for a, t in target["signature"].items() if t != "constexpr"}
        divisible = {a for a, v in values.items() if isinstance(v, int) and v % 16 == 0}
        assert divisible == set(target["divisible_by_16"])
