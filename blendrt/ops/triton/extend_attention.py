"""Prefill / extend attention over the paged pool (flash-attention style, Triton).

Query i of sequence b sits at position context_lens[b] - q_len_b + i and attends to keys
0..that position, all read from the pages (the new tokens' K/V are stored first).

Grid (cdiv(max_query_len, TOKENS_M), B, H_kv * HEAD_CHUNKS). GQA heads are packed: a program
owns the BLOCK_M rows (token, query head) of TOKENS_M consecutive tokens and the HEADS query
heads sharing one KV head, so each K/V tile feeds all of them. A decode row in a mixed batch
then fills `group` rows of the tile instead of 1, and short extends waste group-times less.

With a quantized cache (k_scale/v_scale given: int8 or fp8_e4m3 values, a float16 scale per
(token, head) row, blendrt/ops/kv_quant.py) each K/V tile is loaded as bytes, decoded and
multiplied by its rows' scales in registers (`dequantize_rows`), then cast to q's dtype for
the same dots: the tiles, and the bytes read per key, are what change; never a separate pass.

A sliding window (window > 0: position p sees keys p - window < j <= p) starts each program's
key loop at the first key any of its rows can see, so pages before it are skipped, never
named (their table entries may be -1: released). Tiles where the window's lower edge crosses
the program's rows are masked like the diagonal ones; those between load unmasked.
Soft-capped scores (SOFTCAP, blendrt/ops/triton/softcap.py) pass through tanh first.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from blendrt.ops.triton.dtypes import TL_TYPES
from blendrt.ops.triton.softcap import softcap_factors, tanh
from blendrt.ops.triton.store_kv import (
    KV_POINTERS,
    SCALE_ARGS,
    dequantize_rows,
    quantized_cache_args,
)


def extend_config(
    head_dim: int, group: int, dtype: torch.dtype, capability: int = 90, quantized: bool = False
) -> dict[str, int]:
    """Tiles and launch options of `extend_attention` (aot_targets reads the same values).

    Measured on an H100 (bf16, 2k-token causal prefill, GQA 4): 128x64 tiles with 8 warps
    (two wgmma warpgroups, ~200-255 registers, no spills) beat 4-warp and 128x128 tiles at
    D <= 128; at D=256 the [BLOCK_M, 256] fp32 accumulator needs 128x32 tiles to stay
    spill-free. sm_80's mma.sync needs more registers per tile: smaller tiles there. float32
    (tests, CPU-sized models) runs 3xTF32 dots on small tiles; it is not a fast path.

    `quantized` (an int8 / fp8_e4m3 cache): the dequantized K/V tiles live in registers on
    their way to the dots, and some tiles above then spill (ptxas, Triton 3.6): those take
    tiles that AOT-compile spill-free for every head dim and group, close to the originals
    (chosen by compiling, not yet measured on a GPU). Unquantized configs are unchanged.
    """
    block_d = triton.next_power_of_2(head_dim)
    half = {  # max(BLOCK_D, 64) -> BLOCK_M, BLOCK_N, num_warps, num_stages
        90: {64: (128, 64, 8, 3), 128: (128, 64, 8, 3), 256: (128, 32, 8, 2)},
        80: {64: (128, 32, 8, 2), 128: (64, 32, 4, 2), 256: (64, 32, 8, 2)},
    }
    half_quantized = {  # `half`'s tiles with int8/fp8 K/V spilled (stack bytes, STL):
        90: {256: (64, 16, 8, 2)},  # 128x32x8w: 72-96 B, 21-27
        80: {128: (64, 32, 8, 2), 256: (32, 32, 8, 1)},  # 64x32x4w: 8-40 B; 64x32x8w: 48-56 B
    }
    if dtype == torch.float32:
        block_m, block_n, warps, stages = 32, 32, 4, 2 if block_d <= 128 else 1
    else:
        target = 90 if capability >= 90 else 80
        tiles = half[target] | (half_quantized[target] if quantized else {})
        block_m, block_n, warps, stages = tiles[max(block_d, 64)]
    heads = min(group, block_m)  # query heads of one KV head per program
    return dict(
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, HEADS=heads,
        TOKENS_M=block_m // heads, HEAD_CHUNKS=triton.cdiv(group, heads),
        num_warps=warps, num_stages=stages,
    )  # fmt: skip


@triton.jit
def _tile(
    q, acc, m_i, l_i,  # [BLOCK_M, BLOCK_D] q and fp32 acc, [BLOCK_M] fp32 max and sum
    k_cache_ptr, v_cache_ptr, page, page_off, n,  # [BLOCK_N] page id, offset, position
    kv_head_off, stride_cp, stride_ct, kv_end, pos, span, scale_log2e, softcap_log2e,
    k_scale_ptr, v_scale_ptr, scale_head_off, stride_sp, stride_st,  # quantized caches only
    D: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    KV_DTYPE: tl.constexpr, SOFTCAP: tl.constexpr,
):  # fmt: skip
    """Online softmax over one BLOCK_N tile of keys. CAUSAL (masked) tiles mask keys past
    each row's position, at or before its position - span (the window) and past kv_end; the
    others are visible to every row and load unmasked. Quantized K/V (KV_DTYPE "int8",
    "fp8_e4m3") are dequantized to q's dtype on load. SOFTCAP: scores are
    tanh(q.k * scale_log2e) * softcap_log2e (log2 units)."""
    dims = tl.arange(0, BLOCK_D)
    rows = page.to(tl.int64) * stride_cp + page_off * stride_ct + kv_head_off  # [BLOCK_N]
    ptrs = rows[:, None] + dims[None, :]  # [BLOCK_N, BLOCK_D]
    if KV_DTYPE != "auto":
        scale_rows = page.to(tl.int64) * stride_sp + page_off * stride_st + scale_head_off
    if CAUSAL:
        valid = n < kv_end
        mask = valid[:, None] & (dims[None, :] < D)
        k = tl.load(k_cache_ptr + ptrs, mask=mask, other=0.0)
        v = tl.load(v_cache_ptr + ptrs, mask=mask, other=0.0)
        if KV_DTYPE != "auto":
            k_s = tl.load(k_scale_ptr + scale_rows, mask=valid, other=0.0)  # [BLOCK_N]
            v_s = tl.load(v_scale_ptr + scale_rows, mask=valid, other=0.0)
            k = dequantize_rows(k, k_s, KV_DTYPE).to(q.dtype)
            v = dequantize_rows(v, v_s, KV_DTYPE).to(q.dtype)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2e
        if SOFTCAP:
            qk = tanh(qk) * softcap_log2e
        # Visible: pos - span < n <= pos, as one unsigned compare of pos - n against span.
        # NOTE: keys at or past kv_end lie past every row's position (pos < kv_end).
        visible = (pos[:, None] - n[None, :]).to(tl.uint32) < span.to(tl.uint32)
        # NOTE: masked scores are -1e30, not -inf: a row that saw no key yet (a window's
        # edge) then sums garbage with p = 1, finite, which the first key it does see wipes
        # out (alpha = exp2(-1e30 - m) = 0); and no exp2 of -inf - -inf.
        qk = tl.where(visible, qk, -1.0e30)  # [BLOCK_M, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
    else:
        if D == BLOCK_D:
            k = tl.load(k_cache_ptr + ptrs)
            v = tl.load(v_cache_ptr + ptrs)
        else:
            k = tl.load(k_cache_ptr + ptrs, mask=dims[None, :] < D, other=0.0)
            v = tl.load(v_cache_ptr + ptrs, mask=dims[None, :] < D, other=0.0)
        if KV_DTYPE != "auto":
            k = dequantize_rows(k, tl.load(k_scale_ptr + scale_rows), KV_DTYPE).to(q.dtype)
            v = dequantize_rows(v, tl.load(v_scale_ptr + scale_rows), KV_DTYPE).to(q.dtype)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
        if SOFTCAP:
            qk = tanh(qk * scale_log2e) * softcap_log2e
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            p = tl.math.exp2(qk - m_new[:, None])
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * scale_log2e)
            p = tl.math.exp2(qk * scale_log2e - m_new[:, None])  # one FFMA per score
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _next_tile(table_ptr, n, page_idx, page_off, kv_end, tokens_per_page, step_pages, step_off,
               BLOCK_N: tl.constexpr):  # fmt: skip
    """Advances the [BLOCK_N] key positions by BLOCK_N = step_pages * tpp + step_off without
    a division per key, and loads the next tile's page ids (a tile ahead of its K/V loads,
    which keeps the K/V copies pipelined). Never reads table entries at or past kv_end."""
    n += BLOCK_N
    page_off += step_off
    wrap = page_off >= tokens_per_page
    page_idx += step_pages + wrap.to(tl.int32)
    page_off -= tl.where(wrap, tokens_per_page, 0)
    page = tl.load(table_ptr + page_idx, mask=n < kv_end, other=0)
    return n, page_idx, page_off, page


# NOTE: the window is never specialized (1 would become a constexpr): the compile the JIT
# makes is the one aot_targets lists, whatever the window.
@triton.jit(do_not_specialize=["window"])
def _extend_attention_kernel(
    q_ptr,  # [T, H_q, D]
    o_ptr,  # [T, H_q, D]
    k_cache_ptr,  # [num_pages, tokens_per_page, H_kv, D] strided view of the pool
    v_cache_ptr,  # [num_pages, tokens_per_page, H_kv, D] same strides as k_cache
    k_scale_ptr,  # [num_pages, tokens_per_page, H_kv] fp16 scales of a quantized cache, or None
    v_scale_ptr,  # [num_pages, tokens_per_page, H_kv] same strides as k_scale, or None
    block_tables_ptr,  # [B, W] int32, -1 padded
    cu_seqlens_q_ptr,  # [B + 1] int32
    context_lens_ptr,  # [B] int32
    scale_log2e,  # fp32: softmax scale * log2(e), or scale / softcap with SOFTCAP
    softcap_log2e,  # fp32: softcap * log2(e) with SOFTCAP
    window,  # int: > 0, position p sees keys p - window < j <= p
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_cp, stride_ct, stride_ch,  # cache page / token / head strides (elements)
    stride_sp, stride_st, stride_sh,  # scale page / token / head strides, or None
    stride_bt,  # block table row stride
    tokens_per_page,
    GROUP: tl.constexpr, HEADS: tl.constexpr, TOKENS_M: tl.constexpr,
    HEAD_CHUNKS: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    KV_DTYPE: tl.constexpr,  # "auto" (the cache holds q's dtype), "int8" or "fp8_e4m3"
    SOFTCAP: tl.constexpr,  # scores -> softcap * tanh(scores / softcap)
):  # fmt: skip
    # Longest-running (last) query blocks of causal prefill start first.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    b = tl.program_id(1)
    q_start = tl.load(cu_seqlens_q_ptr + b)
    q_len = tl.load(cu_seqlens_q_ptr + b + 1) - q_start
    tok0 = pid_m * TOKENS_M
    if tok0 >= q_len:
        return
    context_len = tl.load(context_lens_ptr + b)
    prefix = context_len - q_len
    kv_head = tl.program_id(2) // HEAD_CHUNKS
    g0 = (tl.program_id(2) % HEAD_CHUNKS) * HEADS

    rows = tl.arange(0, BLOCK_M)
    tok = tok0 + rows // HEADS  # [BLOCK_M]
    group_idx = g0 + rows % HEADS
    row_ok = (tok < q_len) & (group_idx < GROUP) & (rows < TOKENS_M * HEADS)
    # NOTE: padding rows take the last position, so they never see an all-masked tile.
    pos = tl.minimum(prefix + tok, context_len - 1)  # [BLOCK_M] query positions
    head = kv_head * GROUP + group_idx
    dims = tl.arange(0, BLOCK_D)
    tok64 = (q_start + tok).to(tl.int64)
    q_mask = row_ok[:, None] & (dims[None, :] < D)
    q_ptrs = q_ptr + tok64[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :]
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)  # [BLOCK_M, BLOCK_D]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    table_ptr = block_tables_ptr + b.to(tl.int64) * stride_bt
    kv_head_off = kv_head.to(tl.int64) * stride_ch
    scale_head_off = kv_head.to(tl.int64) * stride_sh if KV_DTYPE != "auto" else 0
    # Row positions run [prefix + tok0, kv_end); a row at p sees keys (p - span, p].
    kv_end = prefix + tl.minimum(tok0 + TOKENS_M, q_len)
    span = tl.where(window > 0, window, context_len)
    # NOTE: tiles start at kv_start, the first key any row sees: table entries before its
    # page may be -1 (released) and are never loaded. On that grid of tiles, [kv_start,
    # band_end) holds the window's lower edge for some rows (masked), [band_end, full_end)
    # is visible to every row (unmasked), [max(band_end, full_end), kv_end) straddles the
    # diagonal (masked). Without a window kv_start = band_end = 0.
    kv_start = tl.maximum(prefix + tok0 - span + 1, 0)
    band_end = kv_start + tl.cdiv(tl.maximum(kv_end - span - kv_start, 0), BLOCK_N) * BLOCK_N
    full_end = kv_start + (prefix + tok0 + 1 - kv_start) // BLOCK_N * BLOCK_N
    step_pages = BLOCK_N // tokens_per_page
    step_off = BLOCK_N % tokens_per_page
    n = kv_start + tl.arange(0, BLOCK_N)  # [BLOCK_N] key positions of the tile
    page_idx = n // tokens_per_page
    page_off = n % tokens_per_page
    page = tl.load(table_ptr + page_idx, mask=n < kv_end, other=0)
    for _ in range(kv_start, band_end, BLOCK_N):
        acc, m_i, l_i = _tile(
            q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, page, page_off, n, kv_head_off,
            stride_cp, stride_ct, kv_end, pos, span, scale_log2e, softcap_log2e, k_scale_ptr,
            v_scale_ptr, scale_head_off, stride_sp, stride_st, D, BLOCK_D, True, PRECISION,
            KV_DTYPE, SOFTCAP,
        )  # fmt: skip
        n, page_idx, page_off, page = _next_tile(
            table_ptr, n, page_idx, page_off, kv_end, tokens_per_page, step_pages, step_off,
            BLOCK_N,
        )  # fmt: skip
    for _ in range(band_end, full_end, BLOCK_N):
        acc, m_i, l_i = _tile(
            q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, page, page_off, n, kv_head_off,
            stride_cp, stride_ct, kv_end, pos, span, scale_log2e, softcap_log2e, k_scale_ptr,
            v_scale_ptr, scale_head_off, stride_sp, stride_st, D, BLOCK_D, False, PRECISION,
            KV_DTYPE, SOFTCAP,
        )  # fmt: skip
        n, page_idx, page_off, page = _next_tile(
            table_ptr, n, page_idx, page_off, kv_end, tokens_per_page, step_pages, step_off,
            BLOCK_N,
        )  # fmt: skip
    for _ in range(tl.maximum(band_end, full_end), kv_end, BLOCK_N):
        acc, m_i, l_i = _tile(
            q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, page, page_off, n, kv_head_off,
            stride_cp, stride_ct, kv_end, pos, span, scale_log2e, softcap_log2e, k_scale_ptr,
            v_scale_ptr, scale_head_off, stride_sp, stride_st, D, BLOCK_D, True, PRECISION,
            KV_DTYPE, SOFTCAP,
        )  # fmt: skip
        n, page_idx, page_off, page = _next_tile(
            table_ptr, n, page_idx, page_off, kv_end, tokens_per_page, step_pages, step_off,
            BLOCK_N,
        )  # fmt: skip

    out = acc / l_i[:, None]
    o_ptrs = o_ptr + tok64[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=q_mask)


def _precision(dtype: torch.dtype) -> str:
    # NOTE: float32 dots run as 3xTF32 (about fp32-exact); plain TF32 would miss the
    # reference by ~1e-3. Half-precision dots ignore the setting.
    return "tf32x3" if dtype == torch.float32 else "tf32"


@functools.lru_cache
def _capability(device: torch.device) -> int:
    if device.type != "cuda":
        return 90  # the interpreter: any config runs
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def extend_attention(
    q: torch.Tensor,  # [T, H_q, D]
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    block_tables: torch.Tensor,  # [B, W] int32, -1 padded
    cu_seqlens_q: torch.Tensor,  # [B + 1] int32
    context_lens: torch.Tensor,  # [B] int32: cached + new tokens
    scale: float,
    *,
    max_query_len: int,
    k_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv] float16
    v_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv] float16
    window: int = 0,  # > 0: position p sees keys p - window < j <= p
    softcap: float = 0.0,  # > 0: scores s -> softcap * tanh(s / softcap)
) -> torch.Tensor:  # [T, H_q, D]
    """Causal attention of each sequence's new queries over its paged context (its last
    `window` positions with a window; soft-capped with `softcap`). With k_scale/v_scale the
    caches are int8 or float8_e4m3fn (blendrt/ops/kv_quant.py), read dequantized to q's
    dtype."""
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    score_factor, softcap_log2e = softcap_factors(scale, softcap)
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"bad shapes: q {tuple(q.shape)}, caches {tuple(k_cache.shape)}")
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError("k_cache and v_cache need equal strides and a contiguous head dim")
    cache_dtype = k_cache.dtype
    k_cache, v_cache, kv_dtype = quantized_cache_args(k_cache, v_cache, k_scale, v_scale)
    if (
        k_cache.shape[3] != head_dim
        or num_heads % num_kv_heads
        or (kv_dtype == "auto" and q.dtype != cache_dtype)
    ):
        raise ValueError(f"q {q.shape} {q.dtype} does not fit caches {k_cache.shape} {cache_dtype}")
    q = q if q.stride(2) == 1 else q.contiguous()
    block_tables = block_tables.to(torch.int32)  # no-op for the engine's int32 metadata
    out = torch.empty_like(q)  # [T, H_q, D]
    num_seqs = context_lens.shape[0]
    # NOTE: a q_len-0 sequence is allowed; its programs return at once.
    if num_tokens == 0 or num_seqs == 0 or max_query_len == 0:
        return out
    group = num_heads // num_kv_heads
    cfg = extend_config(head_dim, group, q.dtype, _capability(q.device), kv_dtype != "auto")
    grid = (
        triton.cdiv(max_query_len, cfg["TOKENS_M"]),
        num_seqs,
        num_kv_heads * cfg["HEAD_CHUNKS"],
    )
    # NOTE: None (constexpr) without scales: the unquantized kernel keeps its parameters.
    scale_strides = (None, None, None) if k_scale is None else k_scale.stride()
    _extend_attention_kernel[grid](
        q, out, k_cache, v_cache, k_scale, v_scale, block_tables, cu_seqlens_q.to(torch.int32),
        context_lens.to(torch.int32), score_factor, softcap_log2e, window,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), *scale_strides,
        block_tables.stride(0), k_cache.shape[1],
        GROUP=group, HEADS=cfg["HEADS"], TOKENS_M=cfg["TOKENS_M"],
        HEAD_CHUNKS=cfg["HEAD_CHUNKS"], D=head_dim, BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"], PRECISION=_precision(q.dtype),
        KV_DTYPE=kv_dtype, SOFTCAP=softcap > 0, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )  # fmt: skip
    return out


def aot_targets(
    head_dim: int, group: int, dtype: torch.dtype, *, capability: int = 90
) -> list[dict]:
    """The kernels extend_attention launches at this configuration (ahead-of-time compiles):
    over a cache of the model's dtype, then over int8 and fp8_e4m3 caches; then the same
    three soft-capped (SOFTCAP). The window is a runtime int: no variant."""
    ints = [
        "window", "stride_qt", "stride_qh", "stride_ot", "stride_oh", "stride_cp", "stride_ct",
        "stride_ch", "stride_sp", "stride_st", "stride_sh", "stride_bt", "tokens_per_page",
    ]  # fmt: skip
    # NOTE: strides are multiples of D (and of 16) elements; a scale page is page_bytes / 2.
    divisible = ["stride_qt", "stride_qh", "stride_ot", "stride_oh", "stride_cp", "stride_ct",
                 "stride_ch"]  # fmt: skip
    tiles = ("HEADS", "TOKENS_M", "HEAD_CHUNKS", "BLOCK_M", "BLOCK_N", "BLOCK_D")
    ptr = "*" + TL_TYPES[dtype]
    targets = []
    for softcap, kv_dtype in [(s, kv) for s in (False, True) for kv in ("auto", *KV_POINTERS)]:
        cfg = extend_config(head_dim, group, dtype, capability, quantized=kv_dtype != "auto")
        consts = dict(GROUP=group, D=head_dim, PRECISION=_precision(dtype), KV_DTYPE=kv_dtype)
        consts |= dict(SOFTCAP=softcap)
        consts |= {k: cfg[k] for k in tiles}
        cache = ptr if kv_dtype == "auto" else KV_POINTERS[kv_dtype]
        signature = dict.fromkeys(("q_ptr", "o_ptr"), ptr)
        signature |= dict.fromkeys(("k_cache_ptr", "v_cache_ptr"), cache)
        if kv_dtype == "auto":  # no scales: the launcher passes None for them and strides
            consts |= dict.fromkeys(SCALE_ARGS)
        else:
            signature |= dict.fromkeys(("k_scale_ptr", "v_scale_ptr"), "*fp16")
            consts |= dict(stride_sh=1)  # the pool's scale views: heads are contiguous
        signature |= dict.fromkeys(
            ("block_tables_ptr", "cu_seqlens_q_ptr", "context_lens_ptr"), "*i32"
        )
        signature |= dict.fromkeys(("scale_log2e", "softcap_log2e"), "fp32")
        signature |= dict.fromkeys(ints, "i32")
        signature |= dict.fromkeys(consts, "constexpr")
        targets.append(
            dict(
                fn=_extend_attention_kernel,
                signature={n: signature[n] for n in _extend_attention_kernel.arg_names},
                constexprs=consts, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                divisible_by_16=divisible + (["stride_sp"] if kv_dtype != "auto" else []),
            )
        )  # fmt: skip
    return targets
