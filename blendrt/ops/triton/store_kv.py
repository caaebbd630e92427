"""Writes the new tokens' K and V rows into a member's pages of the shared pool.

One launch stores both K and V: program (t, h) copies token t's rows for heads
[h * BLOCK_H, (h + 1) * BLOCK_H) to slot `slot_mapping[t]` = page * tokens_per_page + offset,
or does nothing when the slot is -1.

A quantized cache (blendrt/ops/kv_quant.py: int8 or fp8_e4m3 values, a float16 scale per
(token, head) row) is quantized here, in the same program: each row's amax, its float16
scale, the values divided by that stored scale (IEEE division, round-half-even), bit for bit
what `quantize_kv_reference` computes. The attention kernels decode rows with
`dequantize_rows`, defined here beside the encoder so the format lives in one module.

fp8_e4m3 is encoded and decoded with integer arithmetic on the bits, never with Triton's
`tl.float8e4nv` (native on sm_89+ only): one kernel for sm_80 and sm_90 alike, and the cache
is handed to the kernels as its uint8 bits. Decoding costs a few integer ops per element,
hidden behind the memory traffic the one-byte cache halves.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from blendrt.ops.triton.dtypes import TL_TYPES

#: Elements one program moves per tensor (BLOCK_H * BLOCK_D); keeps registers low.
_MAX_BLOCK_ELEMS = 2048
#: {quantized cache element type: the kernels' KV_DTYPE constexpr (`kv_cache_dtype`)}
KV_DTYPES = {torch.int8: "int8", torch.float8_e4m3fn: "fp8_e4m3"}
#: {KV_DTYPE: Triton's pointer type of the cache the kernels see (fp8 as its bits)}
KV_POINTERS = {"int8": "*i8", "fp8_e4m3": "*u8"}
#: The kernels' scale arguments: None (constexprs) when the cache is not quantized.
SCALE_ARGS = ("k_scale_ptr", "v_scale_ptr", "stride_sp", "stride_st", "stride_sh")


def store_kv_config(head_dim: int, num_kv_heads: int) -> dict[str, int]:
    """Block sizes and launch options of `store_kv`; aot_targets reads the same values."""
    block_d = triton.next_power_of_2(head_dim)
    block_h = max(1, min(triton.next_power_of_2(num_kv_heads), _MAX_BLOCK_ELEMS // block_d))
    return dict(BLOCK_H=block_h, BLOCK_D=block_d, num_warps=4 if block_h * block_d >= 1024 else 2)


@triton.jit
def _e4m3_bits(y):
    """float8_e4m3fn bits (uint8) of fp32 `y`, |y| clamped to 448, rounded to nearest even:
    c10's fp32 -> e4m3fn conversion. Normal results round the fp32 bits at mantissa bit 20
    (a carry moves into the exponent); below 2^-6, adding 2^14 rounds to the 2^-9 grid."""
    sign = (y.to(tl.int32, bitcast=True) >> 24) & 0x80
    a = tl.minimum(tl.abs(y), 448.0)
    bits = a.to(tl.int32, bitcast=True)
    # (7 - 127) << 23 rebiases the exponent; 0x7FFFF + the kept lsb rounds half to even.
    normal = (bits - 1006632960 + 0x7FFFF + ((bits >> 20) & 1)) >> 20
    subnormal = (a + 16384.0).to(tl.int32, bitcast=True) - 0x46800000  # 0x46800000: 2.0**14
    return (tl.where(bits < 0x3C800000, subnormal, normal) | sign).to(tl.uint8)  # 2.0**-6


@triton.jit
def _div_rn(x, d):
    """float32 x / d rounded to nearest even, for [R, C] x and [R] d > 0 a float16 value.

    Division without div.rn.f32, whose slow-path subroutine call makes ptxas spill: d's
    reciprocal to within 2^-50 in float64 (the approximate fp32 reciprocal, then two Newton
    steps), once per row, then one float64 product per element rounded to float32. That is
    RN(x / d): with x's 24-bit and d's 11-bit significands, x / d is never an fp32 midpoint
    and never within 2^-36 (relative) of one, far more than the product's error."""
    d64 = d.to(tl.float64)
    r = (1.0 / d).to(tl.float64)  # [R], relative error ~2^-22
    r = r + r * (1.0 - d64 * r)  # ~2^-44
    r = r + r * (1.0 - d64 * r)  # float64's own precision
    return (x.to(tl.float64) * r[:, None]).to(tl.float32)


@triton.jit
def quantize_rows(x, KV_DTYPE: tl.constexpr):
    """[R, C] float rows (zero past the head dim) -> ([R, C] int8 values or uint8 e4m3fn
    bits, [R] fp16 scales), exactly as `quantize_kv_reference`."""
    x = x.to(tl.float32)
    # amax / qmax rounded to float32, then to float16, as the reference does: the float64
    # product with 1 / qmax rounds to the same float32 (amax / qmax is never within 2^-32 of
    # an fp32 midpoint, for qmax 127 = 127 * 2^0 and 448 = 7 * 2^6 alike).
    inv_qmax = tl.full([], 1.0 / 127.0 if KV_DTYPE == "int8" else 1.0 / 448.0, tl.float64)
    scale = (tl.max(tl.abs(x), 1).to(tl.float64) * inv_qmax).to(tl.float32)
    scale = tl.minimum(scale, 65504.0).to(tl.float16)  # [R]
    divisor = scale.to(tl.float32)
    # NOTE: x / the stored scale, correctly rounded (fp32 `/` is approximate on NVIDIA).
    y = _div_rn(x, tl.where(divisor > 0.0, divisor, 1.0))  # [R, C]
    y = tl.where(divisor[:, None] > 0.0, y, 0.0)
    if KV_DTYPE == "int8":
        # Adding 1.5 * 2^23 rounds |y| < 2^22 to an integer, half to even (no libdevice
        # rint in the interpreter).
        r = (y + 12582912.0) - 12582912.0
        q = tl.minimum(tl.maximum(r, -127.0), 127.0).to(tl.int8)
    else:
        q = _e4m3_bits(y)
    return q, scale


@triton.jit
def dequantize_rows(q, scale, KV_DTYPE: tl.constexpr):
    """[R, C] int8 values or uint8 e4m3fn bits and their [R] fp16 scales -> [R, C] fp32
    q * scale, exactly `dequantize_kv_reference` before its final cast."""
    s = scale.to(tl.float32)[:, None]  # [R, 1]
    if KV_DTYPE == "int8":
        x = q.to(tl.float32) * s
    else:
        # The bits shifted into a float16's place give e4m3fn's value / 256 (subnormals too);
        # fp16 -> fp32 is exact and 256 q s is exact in fp32.
        b = q.to(tl.int32)
        half = (((b & 0x7F) << 7) | ((b & 0x80) << 8)).to(tl.int16)
        x = half.to(tl.float16, bitcast=True).to(tl.float32) * (s * 256.0)
    return x


@triton.jit
def _store_kv_kernel(
    k_ptr,  # [T, H_kv, D] new keys (last dim contiguous)
    v_ptr,  # [T, H_kv, D] new values (last dim contiguous)
    k_cache_ptr,  # [num_pages, tokens_per_page, H_kv, D] strided view of the pool
    v_cache_ptr,  # [num_pages, tokens_per_page, H_kv, D] same strides as k_cache
    k_scale_ptr,  # [num_pages, tokens_per_page, H_kv] fp16 scales of a quantized cache, or None
    v_scale_ptr,  # [num_pages, tokens_per_page, H_kv] same strides as k_scale, or None
    slot_ptr,  # [T] int32, -1 = skip
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cp,  # cache page stride (elements); NOT tokens_per_page * H_kv * D
    stride_ct,
    stride_ch,
    stride_sp,  # scale page / token / head strides (elements), or None
    stride_st,
    stride_sh,
    tokens_per_page,
    num_kv_heads,
    D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    KV_DTYPE: tl.constexpr,  # "auto" (the cache's own dtype), "int8" or "fp8_e4m3"
):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t)
    if slot < 0:
        return
    # NOTE: page * stride_cp overflows int32 in pools over 2**31 elements: index in int64.
    slot = slot.to(tl.int64)
    page = slot // tokens_per_page
    offset = slot % tokens_per_page
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
    dims = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask = (heads[:, None] < num_kv_heads) & (dims[None, :] < D)
    t64 = t.to(tl.int64)
    k = tl.load(k_ptr + t64 * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=mask)
    v = tl.load(v_ptr + t64 * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=mask)
    dst = page * stride_cp + offset * stride_ct + heads[:, None] * stride_ch + dims[None, :]
    if KV_DTYPE == "auto":
        tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)
    else:
        # NOTE: masked lanes load garbage: zero them, or they would enter the rows' amax.
        k_q, k_s = quantize_rows(tl.where(mask, k, 0.0), KV_DTYPE)
        v_q, v_s = quantize_rows(tl.where(mask, v, 0.0), KV_DTYPE)
        tl.store(k_cache_ptr + dst, k_q, mask=mask)
        tl.store(v_cache_ptr + dst, v_q, mask=mask)
        scale_dst = page * stride_sp + offset * stride_st + heads * stride_sh  # [BLOCK_H]
        tl.store(k_scale_ptr + scale_dst, k_s, mask=heads < num_kv_heads)
        tl.store(v_scale_ptr + scale_dst, v_s, mask=heads < num_kv_heads)


def quantized_cache_args(
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    k_scale: torch.Tensor | None,  # [num_pages, tokens_per_page, H_kv] float16
    v_scale: torch.Tensor | None,  # [num_pages, tokens_per_page, H_kv] float16
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """What every kernel takes for a layer's caches: (k_cache, v_cache, KV_DTYPE). Without
    scales, the caches as they are and "auto"; with them, a quantized cache's values (an fp8
    cache as its uint8 bits: the kernels decode them) and "int8" or "fp8_e4m3"."""
    if k_scale is None and v_scale is None:
        if k_cache.dtype in KV_DTYPES:
            raise ValueError(f"a {k_cache.dtype} KV cache needs its k_scale and v_scale")
        return k_cache, v_cache, "auto"
    if k_scale is None or v_scale is None:
        raise ValueError("pass both k_scale and v_scale, or neither")
    kv_dtype = KV_DTYPES.get(k_cache.dtype)
    if kv_dtype is None or v_cache.dtype != k_cache.dtype:
        raise ValueError(
            f"scales come with an int8 or float8_e4m3fn cache, got {k_cache.dtype}, {v_cache.dtype}"
        )
    if k_scale.dtype != torch.float16 or v_scale.dtype != torch.float16:
        raise ValueError(f"scales must be float16, got {k_scale.dtype}, {v_scale.dtype}")
    if k_scale.shape != k_cache.shape[:3] or v_scale.shape != k_scale.shape:
        raise ValueError(
            f"scales {tuple(k_scale.shape)}, {tuple(v_scale.shape)} do not fit caches "
            f"{tuple(k_cache.shape)}: need [num_pages, tokens_per_page, H_kv]"
        )
    if k_scale.stride() != v_scale.stride():
        raise ValueError("k_scale and v_scale need equal strides")
    if kv_dtype == "fp8_e4m3":
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
    return k_cache, v_cache, kv_dtype


def _check(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(
            f"k and v must both be [T, H_kv, D], got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.shape[2:] != k.shape[1:]:
        raise ValueError(
            f"caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)} do not hold rows of "
            f"shape {tuple(k.shape[1:])}"
        )
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError("k_cache and v_cache need equal strides and a contiguous head dim")


def store_kv(
    k: torch.Tensor,  # [T, H_kv, D]
    v: torch.Tensor,  # [T, H_kv, D]
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    slot_mapping: torch.Tensor,  # [T] int32, -1 = skip
    k_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv] float16
    v_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv] float16
) -> None:
    """Stores row t of k and v at slot slot_mapping[t] of the caches (in the caches' dtype).
    With k_scale/v_scale (an int8 or float8_e4m3fn cache), each (token, head) row is
    quantized and its scale stored beside it (blendrt/ops/kv_quant.py)."""
    _check(k, v, k_cache, v_cache)
    k_cache, v_cache, kv_dtype = quantized_cache_args(k_cache, v_cache, k_scale, v_scale)
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    # NOTE: only the head dim must be contiguous; token/head strides of k and v may differ
    # (v is usually a view into the fused QKV projection).
    k = k if k.stride(2) == 1 else k.contiguous()
    v = v if v.stride(2) == 1 else v.contiguous()
    slot_mapping = slot_mapping.to(torch.int32)
    # NOTE: None (constexpr) without scales: the unquantized kernel keeps its parameters.
    scale_strides = (None, None, None) if k_scale is None else k_scale.stride()
    cfg = store_kv_config(head_dim, num_kv_heads)
    grid = (num_tokens, triton.cdiv(num_kv_heads, cfg["BLOCK_H"]))
    _store_kv_kernel[grid](
        k, v, k_cache, v_cache, k_scale, v_scale, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), *scale_strides,
        k_cache.shape[1], num_kv_heads,
        D=head_dim, BLOCK_H=cfg["BLOCK_H"], BLOCK_D=cfg["BLOCK_D"], KV_DTYPE=kv_dtype,
        num_warps=cfg["num_warps"], num_stages=1,
    )  # fmt: skip


def aot_targets(head_dim: int, group: int, dtype: torch.dtype, num_kv_heads: int = 8) -> list[dict]:
    """The kernels store_kv launches at this configuration, for ahead-of-time compiles: into
    a cache of the model's dtype (k/v come in the cache dtype), then into int8 and fp8_e4m3
    caches (`group` changes none of them)."""
    del group
    cfg = store_kv_config(head_dim, num_kv_heads)
    ptr = "*" + TL_TYPES[dtype]
    ints = [
        "stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_cp", "stride_ct",
        "stride_ch", "stride_sp", "stride_st", "stride_sh", "tokens_per_page", "num_kv_heads",
    ]  # fmt: skip
    targets = []
    for kv_dtype in ("auto", *KV_POINTERS):
        cache = ptr if kv_dtype == "auto" else KV_POINTERS[kv_dtype]
        signature = {"k_ptr": ptr, "v_ptr": ptr, "k_cache_ptr": cache, "v_cache_ptr": cache}
        consts = dict(D=head_dim, BLOCK_H=cfg["BLOCK_H"], BLOCK_D=cfg["BLOCK_D"])
        consts |= dict(KV_DTYPE=kv_dtype)
        if kv_dtype == "auto":  # no scales: the launcher passes None for them and strides
            consts |= dict.fromkeys(SCALE_ARGS)
        else:
            signature |= dict.fromkeys(("k_scale_ptr", "v_scale_ptr"), "*fp16")
            consts |= dict(stride_sh=1)  # the pool's scale views: heads are contiguous
        signature |= {"slot_ptr": "*i32"}
        signature |= {n: "constexpr" if n in consts else "i32" for n in ints}
        signature |= dict.fromkeys(consts, "constexpr")
        divisible = ["stride_kt", "stride_vt", "stride_cp", "stride_ct"]
        divisible += ["stride_sp"] if kv_dtype != "auto" else []
        targets.append(
            dict(
                fn=_store_kv_kernel,
                signature={n: signature[n] for n in _store_kv_kernel.arg_names},
                constexprs=consts,
                num_warps=cfg["num_warps"],
                num_stages=1,
                divisible_by_16=divisible,
            )
        )
    return targets
