"""Weight-only quantized matmul on CUDA: y = x @ W.T with W in the formats of ops/quant.py.

Decode shapes (T <= 16), `_quant_decode_kernel`, grid (cdiv(N, BLOCK_N), splits): a program
streams one [BLOCK_N, BLOCK_K] weight tile per step over its split of K, against all T rows:
at T = 1 a GEMV (products and a row sum on the CUDA cores), else one [16, BLOCK_K] x
[BLOCK_K, BLOCK_N] dot. Each packed byte is read once. The integer weights go into the sum
as they are (int4 as 0..15) and scales/zeros come after, per tile in fp32:
sum_k x_k (q_k - z) s = s (sum_k x_k q_k - z sum_k x_k), a K tile lying inside one group.
With splits > 1 the programs write fp32 partial sums that `_split_sum_kernel` adds up.

Prefill (T > 16), `_quant_gemm_kernel`: GEMM tiles with grouped ordering; each weight tile
is dequantized in registers to x's dtype, (q - z) * s in fp32, then fed to `tl.dot` into an
fp32 accumulator; int8's per-channel scales multiply the accumulator once at the end.

Act-order (`perm`): the launcher gathers x[:, perm] once (a T x K copy), so both kernels
read contiguous rows; at decode that costs one small extra launch.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from blendrt.ops.quant import QuantizedWeight, QuantScheme
from blendrt.ops.triton import quant_matmul_configs as cfgs
from blendrt.ops.triton.dtypes import TL_TYPES


@triton.jit
def _weight_tile(qweight_ptr, offs_n, mask_n, k0, K, stride_wn,
                 BITS: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """Integer weights [BLOCK_N, BLOCK_K] of rows offs_n, inputs k0 .. k0 + BLOCK_K: int8 as
    stored, int4 as 0..15 (input 2j from byte j's low nibble, 2j + 1 from its high one)."""
    rows = qweight_ptr + offs_n.to(tl.int64)[:, None] * stride_wn  # [BLOCK_N, 1]
    if BITS == 8:
        offs_k = k0 + tl.arange(0, BLOCK_K)
        q = tl.load(rows + offs_k[None, :], mask=mask_n[:, None] & (offs_k[None, :] < K), other=0)
    else:  # K is a multiple of the group, and so of BLOCK_K: no K mask
        offs_b = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        packed = tl.load(rows + offs_b[None, :], mask=mask_n[:, None], other=0)  # [BN, BK / 2]
        q = tl.interleave(packed & 0xF, packed >> 4)
    return q


@triton.jit
def _group_params(scales_ptr, zeros_ptr, offs_n, mask_n, group, stride_sn):
    """int4: fp32 scale and zero point [BLOCK_N] of rows offs_n in group `group`."""
    offs = offs_n.to(tl.int64) * stride_sn + group
    s = tl.load(scales_ptr + offs, mask=mask_n, other=0.0).to(tl.float32)
    z = tl.load(zeros_ptr + offs, mask=mask_n, other=0).to(tl.float32)
    return s, z


@triton.jit
def _quant_decode_kernel(
    x_ptr,  # [T, K], last dim contiguous
    qweight_ptr,  # [N, K] int8 | [N, K // 2] uint8 (two int4 per byte)
    scales_ptr,  # [N] (int8) | [N, K // G] (int4), x's dtype
    zeros_ptr,  # [N, K // G] uint8 (int4); int8: scales_ptr again, never read
    out_ptr,  # [S, T, N] fp32 partial sums when S > 1, else [T, N] in x's dtype
    T, N, K, stride_xt, stride_wn, stride_sn, stride_os, tiles_per_split,
    BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    split = tl.program_id(1)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_t = tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    x_rows = x_ptr + offs_t[:, None] * stride_xt  # [BLOCK_T, 1]
    acc = tl.zeros([BLOCK_T, BLOCK_N], tl.float32)
    tile_end = tl.minimum((split + 1) * tiles_per_split, tl.cdiv(K, BLOCK_K))
    for tile in range(split * tiles_per_split, tile_end):
        k0 = tile * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x_mask = mask_t[:, None] & (offs_k[None, :] < K)
        x = tl.load(x_rows + offs_k[None, :], mask=x_mask, other=0.0)  # [BLOCK_T, BLOCK_K]
        q = _weight_tile(qweight_ptr, offs_n, mask_n, k0, K, stride_wn, BITS, BLOCK_K)
        if BLOCK_T == 1:
            part = tl.sum(q.to(tl.float32) * x.to(tl.float32), 1)[None, :]  # [1, BLOCK_N]
        else:
            part = tl.dot(x, tl.trans(q.to(x.dtype)), input_precision=PRECISION)  # [BT, BN]
        if BITS == 4:
            s, z = _group_params(scales_ptr, zeros_ptr, offs_n, mask_n, k0 // GROUP, stride_sn)
            x_sum = tl.sum(x.to(tl.float32), 1)[:, None]  # [BLOCK_T, 1]
            acc += (part - x_sum * z[None, :]) * s[None, :]
        else:
            acc += part
    if BITS == 8:
        acc *= tl.load(scales_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + split * stride_os + offs_t[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_t[:, None] & mask_n[None, :])


@triton.jit
def _split_sum_kernel(
    part_ptr,  # [S, T, N] fp32
    out_ptr,  # [T, N] in x's dtype
    TN, num_splits, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TN
    acc = tl.zeros([BLOCK], tl.float32)
    for s in range(num_splits):
        acc += tl.load(part_ptr + s * TN + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _quant_gemm_kernel(
    x_ptr,  # [T, K], last dim contiguous
    qweight_ptr,  # [N, K] int8 | [N, K // 2] uint8 (two int4 per byte)
    scales_ptr,  # [N] (int8) | [N, K // G] (int4), x's dtype
    zeros_ptr,  # [N, K // G] uint8 (int4); int8: scales_ptr again, never read
    out_ptr,  # [T, N] in x's dtype
    T, N, K, stride_xt, stride_wn, stride_sn,
    BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # GROUP_M row tiles sweep the column tiles together: their weight tiles stay in L2.
    pid = tl.program_id(0)
    width = GROUP_M * tl.cdiv(N, BLOCK_N)
    first_m = (pid // width) * GROUP_M
    rows = tl.minimum(tl.cdiv(T, BLOCK_M) - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % rows
    pid_n = (pid % width) // rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < T
    mask_n = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xt  # [BLOCK_M, 1]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x_mask = mask_m[:, None] & (offs_k[None, :] < K)
        x = tl.load(x_rows + offs_k[None, :], mask=x_mask, other=0.0)  # [BLOCK_M, BLOCK_K]
        q = _weight_tile(qweight_ptr, offs_n, mask_n, k0, K, stride_wn, BITS, BLOCK_K)
        if BITS == 4:
            s, z = _group_params(scales_ptr, zeros_ptr, offs_n, mask_n, k0 // GROUP, stride_sn)
            w = ((q.to(tl.float32) - z[:, None]) * s[:, None]).to(x.dtype)  # [BN, BK]
        else:
            w = q.to(x.dtype)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    if BITS == 8:
        acc *= tl.load(scales_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check(x: torch.Tensor, qw: QuantizedWeight) -> None:
    if x.dim() != 2 or x.dtype not in TL_TYPES:
        raise ValueError(f"x must be a 2-D fp16/bf16/fp32 tensor, got {x.dtype} {tuple(x.shape)}")
    if x.device.type != "cuda" and not _interpreting():
        raise ValueError(f"x must be a CUDA tensor, got {x.device} (CPUs: ops/cpu/quant_matmul)")
    s, n, k = qw.scheme, qw.out_features, qw.in_features
    if x.shape[1] != k:
        raise ValueError(f"x has {x.shape[1]} inputs, the weight {k}")
    if s.bits == 4 and k % s.group_size:
        raise ValueError(f"int4 inputs ({k}) must be a multiple of the group size {s.group_size}")
    want = torch.int8 if s.bits == 8 else torch.uint8
    if qw.qweight.dim() != 2 or qw.qweight.dtype != want:
        raise ValueError(f"{s.name} qweight must be 2-D {want}, got {qw.qweight.dtype}")
    groups = (n,) if s.bits == 8 else (n, k // s.group_size)
    if tuple(qw.scales.shape) != groups or qw.scales.dtype != x.dtype:
        raise ValueError(
            f"scales must be {x.dtype} {groups} (x's dtype), got {qw.scales.dtype} "
            f"{tuple(qw.scales.shape)}"
        )
    if s.bits == 4 and (
        qw.zeros is None or tuple(qw.zeros.shape) != groups or qw.zeros.dtype != torch.uint8
    ):
        raise ValueError(f"int4 zeros must be uint8 {groups}")
    if qw.perm is not None and (qw.perm.shape != (k,) or qw.perm.dtype != torch.int32):
        raise ValueError(f"perm must be int32 ({k},), got {qw.perm.dtype} {tuple(qw.perm.shape)}")
    for name in ("qweight", "scales", "zeros", "perm"):
        t = getattr(qw, name)
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")


def quant_matmul_triton(
    x: torch.Tensor,  # [T, K] fp16 | bf16 | fp32
    qw: QuantizedWeight,  # [N, K] in the formats of ops/quant.py, scales in x's dtype
    *,
    split_k: int | None = None,
) -> torch.Tensor:  # [T, N] in x's dtype
    """x @ W.T (x[:, perm] first for act-order weights). `split_k` (tests, tuning) forces the
    decode kernel's number of K splits; by default they fill the machine."""
    _check(x, qw)
    if qw.perm is not None:
        x = x.index_select(1, qw.perm)  # contiguous [T, K]
    x = x if x.stride(1) == 1 else x.contiguous()
    (tokens, k), n, s = x.shape, qw.out_features, qw.scheme
    out = torch.empty((tokens, n), dtype=x.dtype, device=x.device)
    if tokens == 0 or n == 0:
        return out
    zeros = qw.zeros if qw.zeros is not None else qw.scales  # int8: never read
    args = (x, qw.qweight, qw.scales, zeros)
    strides = (x.stride(0), qw.qweight.stride(0), qw.scales.stride(0))
    consts = dict(BITS=s.bits, GROUP=s.group_size or 0, PRECISION=cfgs.precision(x.dtype))
    if tokens > cfgs.MAX_DECODE_TOKENS:
        cfg = cfgs.gemm_config(tokens, s.bits, s.group_size, x.dtype, cfgs.capability(x.device))
        grid = (triton.cdiv(tokens, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
        _quant_gemm_kernel[grid](*args, out, tokens, n, k, *strides, **consts, **cfg)
        return out
    cfg = cfgs.decode_config(tokens, s.bits, s.group_size, x.dtype)
    n_blocks = triton.cdiv(n, cfg["BLOCK_N"])
    k_tiles = triton.cdiv(k, cfg["BLOCK_K"])
    splits, per_split = cfgs.split_k(n_blocks, k_tiles, cfgs.sm_count(x.device), split_k)
    part = out if splits == 1 else torch.empty((splits, tokens, n), device=x.device)
    _quant_decode_kernel[(n_blocks, splits)](
        *args, part, tokens, n, k, *strides, tokens * n, per_split, **consts, **cfg
    )
    if splits > 1:
        grid = (triton.cdiv(tokens * n, cfgs.SPLIT_SUM["BLOCK"]),)
        _split_sum_kernel[grid](part, out, tokens * n, splits, **cfgs.SPLIT_SUM)
    return out


def aot_targets(
    k: int, n: int, tokens: int, scheme: QuantScheme, dtype: torch.dtype, *, capability: int = 90
) -> list[dict]:
    """The kernels quant_matmul_triton launches for x [tokens, k] in `dtype` and an [n, k]
    weight, on a GPU of SM_COUNTS[capability] multiprocessors (ahead-of-time compiles)."""
    ty, bits, group = TL_TYPES[dtype], scheme.bits, scheme.group_size
    scales_k = 1 if bits == 8 else k // group
    ints = dict(T=tokens, N=n, K=k, stride_xt=k, stride_wn=k * bits // 8, stride_sn=scales_k)
    out_ty = ty
    consts = dict(BITS=bits, GROUP=group or 0, PRECISION=cfgs.precision(dtype))
    if tokens > cfgs.MAX_DECODE_TOKENS:
        fn, cfg = _quant_gemm_kernel, cfgs.gemm_config(tokens, bits, group, dtype, capability)
    else:
        fn, cfg = _quant_decode_kernel, cfgs.decode_config(tokens, bits, group, dtype)
        n_blocks, k_tiles = triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(k, cfg["BLOCK_K"])
        splits, per_split = cfgs.split_k(n_blocks, k_tiles, cfgs.SM_COUNTS[capability])
        ints |= dict(stride_os=tokens * n, tiles_per_split=per_split)
        out_ty = "fp32" if splits > 1 else ty
    options = {key: cfg.pop(key) for key in ("num_warps", "num_stages")}
    consts |= cfg
    pointers = dict(
        x_ptr=f"*{ty}", qweight_ptr="*i8" if bits == 8 else "*u8", scales_ptr=f"*{ty}",
        zeros_ptr=f"*{ty}" if bits == 8 else "*u8", out_ptr=f"*{out_ty}",
    )  # fmt: skip
    signature = {a: "constexpr" if a in consts else pointers.get(a, "i32") for a in fn.arg_names}
    divisible = [a for a, v in ints.items() if v % 16 == 0]
    targets = [dict(fn=fn, signature=signature, constexprs=consts, **options,
                    divisible_by_16=divisible)]  # fmt: skip
    if out_ty != ty:  # the split-K sum
        signature = dict(part_ptr="*fp32", out_ptr=f"*{ty}", TN="i32", num_splits="i32")
        block, warps, stages = cfgs.SPLIT_SUM.values()
        targets.append(
            dict(fn=_split_sum_kernel, signature=signature | {"BLOCK": "constexpr"},
                 constexprs=dict(BLOCK=block), num_warps=warps, num_stages=stages,
                 divisible_by_16=["TN"] if tokens * n % 16 == 0 else [])
        )  # fmt: skip
    return targets
