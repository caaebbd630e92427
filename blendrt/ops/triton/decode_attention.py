"""Split-KV ("flash-decoding") paged attention for decode steps: one query token per sequence.

Stage 1, `_decode_split_kernel`, grid (B, H_kv, num_splits): a program takes all `group` query
heads of one KV head as the rows of its dots (padded to >= 16 rows) over one contiguous range
of the sequence's positions, reads K/V straight from the pages (page = block_table[n // tpp],
slot = n % tpp), runs an fp32 online softmax in base 2 and writes its normalised partial output
and log2-sum-exp2 to fp32 scratch. Stage 2, `_decode_merge_kernel`, grid (B, H_q), merges the
splits by their log-sum-exp; empty splits carry lse = -inf and weigh nothing.

Each sequence cuts its own context into up to `num_splits` ranges of whole BLOCK_N blocks (at
least `min_split_len` tokens each), so long contexts spread over the machine and short ones in
the same batch use fewer splits. On an H100 (D=128, 8 KV heads, fp16) this reached 81-97% of
copy bandwidth at batch 16-64 with 2k-8k contexts, and 83% at batch 1 with 32k.

With a quantized cache (k_scale/v_scale given: int8 or fp8_e4m3 values, a float16 scale per
(token, head) row, blendrt/ops/kv_quant.py) stage 1 loads each K/V tile as bytes and its
rows' scales, dequantizes them in registers (`dequantize_rows`) to q's dtype and runs the same
dots: one byte per element read at the same tiles (not re-tuned: no GPU measurement yet).

A sliding window (window > 0) cuts each sequence's range to its last `window` positions
before the splits share it out: pages before it are neither read nor named (their table
entries may be -1, released), and short windows need fewer splits. Soft-capped scores
(SOFTCAP, blendrt/ops/triton/softcap.py) pass through tanh before the online softmax.
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

MIN_SPLIT_TOKENS = 128  # the heuristic gives a split at least this many tokens (H100: 128 beat 256)
MAX_SPLITS = 64
PROGRAMS_PER_SM = 8  # stage 1 aims at this many programs per multiprocessor: a few waves
INTERPRETER_SM_COUNT = 4  # off CUDA (the Triton interpreter), keeps grids small
MERGE_BLOCK_S = 32  # splits merged per step of stage 2


# NOTE: the window is never specialized (1 would become a constexpr): the compile the JIT
# makes is the one aot_targets lists, whatever the window.
@triton.jit(do_not_specialize=["window"])
def _decode_split_kernel(
    q_ptr,  # [B, H_q, D]
    k_ptr,  # [num_pages, tokens_per_page, H_kv, D], last dim contiguous
    v_ptr,  # [num_pages, tokens_per_page, H_kv, D], last dim contiguous
    k_scale_ptr,  # [num_pages, tokens_per_page, H_kv] fp16 scales of a quantized cache, or None
    v_scale_ptr,  # [num_pages, tokens_per_page, H_kv] same strides as k_scale, or None
    block_tables_ptr,  # [B, W] int32, -1 padded
    context_lens_ptr,  # [B] int32
    part_out_ptr,  # [B, H_q, S, D] fp32: each split's normalised output
    part_lse_ptr,  # [B, H_q, S] fp32: each split's log2-sum-exp2, -inf when empty
    scale_log2, tokens_per_page, num_splits, min_split_len,  # scale * log2(e): fp32; ints
    window,  # int: > 0, the query sees only the last `window` positions
    softcap_log2,  # fp32 softcap * log2(e) with SOFTCAP (scale_log2 is then scale / softcap)
    stride_qb, stride_qh, stride_kp, stride_kt, stride_kh, stride_vp, stride_vt, stride_vh,
    stride_sp, stride_st, stride_sh,  # scale page / token / head strides, or None
    stride_bt,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    KV_DTYPE: tl.constexpr,  # "auto" (the cache holds q's dtype), "int8" or "fp8_e4m3"
    SOFTCAP: tl.constexpr,  # scores -> tanh(s * scale_log2) * softcap_log2
):  # fmt: skip
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context_len = tl.load(context_lens_ptr + b)
    # NOTE: the splits share [kv_start, context_len), the query's window: table entries
    # before kv_start's page may be -1 (released pages) and are never loaded.
    kv_start = tl.where(window > 0, tl.maximum(context_len - window, 0), 0)
    split_len = tl.cdiv(tl.cdiv(context_len - kv_start, num_splits), BLOCK_N) * BLOCK_N
    split_len = tl.maximum(split_len, min_split_len)
    start = kv_start + split * split_len
    end = tl.minimum(start + split_len, context_len)  # start >= end: an empty split

    offs_g = tl.arange(0, BLOCK_G)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_g = offs_g < GROUP
    mask_d = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_g  # [BLOCK_G] query heads of this KV head
    q_ptrs = tl.multiple_of(
        q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], [1, 16]
    )
    q = tl.load(q_ptrs, mask=mask_g[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_G, BLOCK_D]
    bt_row = block_tables_ptr + b * stride_bt
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    if KV_DTYPE != "auto":
        k_scale_head = k_scale_ptr + kv_head * stride_sh
        v_scale_head = v_scale_ptr + kv_head * stride_sh

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max, log2 units
    l_i = tl.zeros([BLOCK_G], tl.float32)  # running sum of exp2
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + offs_n  # [BLOCK_N] positions in the sequence
        mask_n = n < end
        # NOTE: masked by the context end, so the -1 padding of the table is never read;
        # n >= start >= kv_start, so neither are released entries.
        page = tl.load(bt_row + n // tokens_per_page, mask=mask_n, other=0).to(tl.int64)
        slot = n % tokens_per_page
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k_rows = page * stride_kp + slot * stride_kt  # [BLOCK_N], int64: pools exceed 2**31
        # NOTE: rows start 16-byte aligned (the launcher checks): lets AOT builds vectorise too.
        k_ptrs = tl.multiple_of(k_head + k_rows[:, None] + offs_d[None, :], [1, 16])
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        if KV_DTYPE != "auto":
            scale_rows = page * stride_sp + slot * stride_st  # [BLOCK_N]
            k_s = tl.load(k_scale_head + scale_rows, mask=mask_n, other=0.0)
            k = dequantize_rows(k, k_s, KV_DTYPE).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2  # [BLOCK_G, BLOCK_N]
        if SOFTCAP:
            s = tanh(s) * softcap_log2
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every block holds a valid token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_rows = page * stride_vp + slot * stride_vt
        v_ptrs = tl.multiple_of(v_head + v_rows[:, None] + offs_d[None, :], [1, 16])
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        if KV_DTYPE != "auto":
            v_s = tl.load(v_scale_head + scale_rows, mask=mask_n, other=0.0)
            v = dequantize_rows(v, v_s, KV_DTYPE).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]  # [BLOCK_G, BLOCK_D]
    lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    row = (b * tl.num_programs(1) * GROUP + heads) * num_splits + split  # [BLOCK_G]
    out_ptrs = tl.multiple_of(part_out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], [1, 16])
    tl.store(out_ptrs, out, mask=mask_g[:, None] & mask_d[None, :])
    tl.store(part_lse_ptr + row, lse, mask=mask_g)


@triton.jit
def _decode_merge_kernel(
    part_out_ptr,  # [B, H_q, S, D] fp32
    part_lse_ptr,  # [B, H_q, S] fp32, -inf for empty splits
    out_ptr,  # [B, H_q, D]
    num_splits, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    row = b * tl.num_programs(1) + h
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    lse_row = part_lse_ptr + row * num_splits

    # One pass, rescaling as the running max grows; the loads don't wait on the lse.
    m_run = tl.full([], float("-inf"), tl.float32)
    denom = tl.zeros([], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):
        s = s0 + offs_s
        lse = tl.load(lse_row + s, mask=s < num_splits, other=float("-inf"))  # [BLOCK_S]
        part_ptrs = part_out_ptr + (row * num_splits + s)[:, None] * HEAD_DIM + offs_d[None, :]
        part_ptrs = tl.multiple_of(part_ptrs, [1, 16])
        part = tl.load(part_ptrs, mask=(s < num_splits)[:, None] & mask_d[None, :], other=0.0)
        m_new = tl.maximum(m_run, tl.max(lse, 0))
        # NOTE: empty splits have lse = -inf; while all seen are empty, a 0 pivot keeps
        # exp2 NaN-free, and their weights are exactly 0 (their outputs are never used).
        pivot = tl.where(m_new == float("-inf"), 0.0, m_new)
        rescale = tl.exp2(m_run - pivot)
        w = tl.exp2(lse - pivot)  # [BLOCK_S]
        contrib = tl.where((lse > float("-inf"))[:, None], w[:, None] * part, 0.0)
        acc = acc * rescale + tl.sum(contrib, 0)
        denom = denom * rescale + tl.sum(w, 0)
        m_run = m_new
    out = acc / tl.where(denom > 0.0, denom, 1.0)
    out_ptrs = tl.multiple_of(out_ptr + b * stride_ob + h * stride_oh + offs_d, [16])
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_d)


def _config(head_dim: int, group: int, dtype: torch.dtype) -> dict:
    """The single source of block sizes and launch options for both kernels."""
    block_d = triton.next_power_of_2(head_dim)
    # K+V tiles of one stage stay <= 32 KB; 2 stages beat 3 on an H100 (64-token blocks for
    # D <= 128, 32 for D = 256: each measured best there). Small smem keeps occupancy high.
    block_n = max(16, min(64, 16384 // (block_d * torch.empty((), dtype=dtype).element_size())))
    split = {
        "GROUP": group,
        "HEAD_DIM": head_dim,
        "BLOCK_G": max(16, triton.next_power_of_2(group)),
        "BLOCK_N": block_n,
        "BLOCK_D": block_d,
    }
    merge = {"HEAD_DIM": head_dim, "BLOCK_D": block_d, "BLOCK_S": MERGE_BLOCK_S}
    return {
        "split": (split, {"num_warps": 4, "num_stages": 2}),
        "merge": (merge, {"num_warps": 4, "num_stages": 1}),
    }


def _rows_aligned(t: torch.Tensor) -> bool:
    """NOTE: the kernels' `tl.multiple_of(..., 16)` hints rely on this: every head row of `t`
    is contiguous and starts on a 16-byte boundary (pool views do when D * elsize % 16 == 0)."""
    size = t.element_size()
    strides = t.stride()
    return (
        strides[-1] == 1
        and t.data_ptr() % 16 == 0
        and all(s * size % 16 == 0 for s in (*strides[:-1], t.shape[-1]))
    )


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def _num_splits(programs: int, max_context_len: int, device: torch.device) -> int:
    """Enough splits for a few waves of stage 1, each of >= MIN_SPLIT_TOKENS tokens."""
    want = triton.cdiv(PROGRAMS_PER_SM * _sm_count(device), max(programs, 1))
    by_length = triton.cdiv(max(max_context_len, 1), MIN_SPLIT_TOKENS)
    return max(1, min(want, by_length, MAX_SPLITS))


def decode_attention(
    q: torch.Tensor,  # [B, H_q, D]
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    block_tables: torch.Tensor,  # [B, W] int32, -1 padded
    context_lens: torch.Tensor,  # [B] int32, >= 1
    scale: float,
    *,
    max_context_len: int,
    num_splits: int | None = None,
    k_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv] float16
    v_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv] float16
    window: int = 0,  # > 0: each query sees only its sequence's last `window` positions
    softcap: float = 0.0,  # > 0: scores s -> softcap * tanh(s / softcap)
) -> torch.Tensor:  # [B, H_q, D] in q's dtype
    """Attention of each sequence's one query over its `context_lens[b]` paged tokens.

    `max_context_len` comes from host metadata (no device sync). A forced `num_splits` (tests,
    tuning) lets splits shrink to one block; otherwise splits hold >= MIN_SPLIT_TOKENS. With
    k_scale/v_scale the caches are int8 or float8_e4m3fn (blendrt/ops/kv_quant.py), read
    dequantized to q's dtype. A `window` reads only the pages of each sequence's last
    `window` positions; `softcap` caps the scores."""
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    score_factor, softcap_log2 = softcap_factors(scale, softcap)
    batch, num_q_heads, head_dim = q.shape
    _, tokens_per_page, num_kv_heads, _ = k_cache.shape
    if v_cache.shape != k_cache.shape or k_cache.shape[3] != head_dim:
        raise ValueError(f"cache shapes {k_cache.shape}, {v_cache.shape} don't fit q {q.shape}")
    same_dtypes = q.dtype == k_cache.dtype and v_cache.dtype == q.dtype
    k_cache, v_cache, kv_dtype = quantized_cache_args(k_cache, v_cache, k_scale, v_scale)
    if num_q_heads % num_kv_heads or (kv_dtype == "auto" and not same_dtypes):
        raise ValueError("q heads must be a multiple of KV heads, and all dtypes equal")
    q = q if _rows_aligned(q) else q.contiguous()
    if not (_rows_aligned(q) and _rows_aligned(k_cache) and _rows_aligned(v_cache)):
        raise ValueError("q, k_cache and v_cache need contiguous, 16-byte aligned head rows")
    if block_tables.dtype != torch.int32 or context_lens.dtype != torch.int32:
        raise ValueError("block_tables and context_lens must be int32")
    block_tables = block_tables if block_tables.stride(1) == 1 else block_tables.contiguous()
    group = num_q_heads // num_kv_heads
    cfg = _config(head_dim, group, q.dtype)
    split_consts, split_opts = cfg["split"]
    merge_consts, merge_opts = cfg["merge"]
    if num_splits is None:
        span = min(max_context_len, window) if window > 0 else max_context_len
        num_splits = _num_splits(batch * num_kv_heads, span, q.device)
        min_split_len = MIN_SPLIT_TOKENS
    else:
        min_split_len = split_consts["BLOCK_N"]
    out = torch.empty((batch, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    part_out = torch.empty(  # [B, H_q, S, D]
        (batch, num_q_heads, num_splits, head_dim), dtype=torch.float32, device=q.device
    )
    part_lse = torch.empty((batch, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
    # NOTE: None (constexpr) without scales: the unquantized kernel keeps its parameters.
    scale_strides = (None, None, None) if k_scale is None else k_scale.stride()
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, k_scale, v_scale, block_tables, context_lens, part_out, part_lse,
        score_factor, tokens_per_page, num_splits, min_split_len, window, softcap_log2,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        *scale_strides, block_tables.stride(0), KV_DTYPE=kv_dtype, SOFTCAP=softcap > 0,
        **split_consts, **split_opts,
    )  # fmt: skip
    _decode_merge_kernel[(batch, num_q_heads)](
        part_out, part_lse, out, num_splits, out.stride(0), out.stride(1),
        **merge_consts, **merge_opts,
    )  # fmt: skip
    return out


def aot_targets(
    head_dim: int, group: int, dtype: torch.dtype, *, capability: int | None = None
) -> list[dict]:
    """What the launcher compiles at this configuration, for `triton.compile(ASTSource(...))`:
    per kernel, `fn`, `signature` (every argument, constexprs as "constexpr"), `constexprs`,
    `num_warps`, `num_stages`, all read off `_config`: the split kernel over a cache of the
    model's dtype, and the merge kernel.

    Given a `capability` (as `blendrt.ops.aot.available_targets` passes it; the tiles do not
    depend on it), the split kernels over int8 and fp8_e4m3 caches follow, then the
    soft-capped (SOFTCAP) split kernel over each cache. NOTE: without one the list stays the
    unquantized, uncapped pair, which tests/ops/triton/test_decode_attention.py's AOT check
    counts (two kernels per configuration). The window is a runtime int: no variant."""
    ty = TL_TYPES[dtype]
    pointers = {
        "q_ptr": f"*{ty}", "k_ptr": f"*{ty}", "v_ptr": f"*{ty}", "out_ptr": f"*{ty}",
        "block_tables_ptr": "*i32", "context_lens_ptr": "*i32",
        "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32", "scale_log2": "fp32",
        "softcap_log2": "fp32",
    }  # fmt: skip
    cfg = _config(head_dim, group, dtype)
    split_consts, split_opts = cfg["split"]
    merge_consts, merge_opts = cfg["merge"]
    # No scales: the launcher passes None for them and their strides.
    unquantized = dict(split_consts, KV_DTYPE="auto") | dict.fromkeys(SCALE_ARGS)
    kernels = [
        (_decode_split_kernel, unquantized | {"SOFTCAP": False}, pointers, split_opts),
        (_decode_merge_kernel, merge_consts, pointers, merge_opts),
    ]
    variants = [(kv, cap) for cap in (False, True) for kv in ("auto", *KV_POINTERS)][1:]
    for kv_dtype, softcap in variants if capability is not None else ():
        if kv_dtype == "auto":
            consts, ptrs = unquantized, pointers
        else:  # stride_sh = 1: the pool's scale views keep a token's heads contiguous.
            consts = dict(split_consts, KV_DTYPE=kv_dtype, stride_sh=1)
            ptrs = pointers | dict.fromkeys(("k_ptr", "v_ptr"), KV_POINTERS[kv_dtype])
            ptrs |= dict.fromkeys(("k_scale_ptr", "v_scale_ptr"), "*fp16")
        kernels.append((_decode_split_kernel, consts | {"SOFTCAP": softcap}, ptrs, split_opts))
    targets = []
    for fn, constexprs, ptrs, options in kernels:
        signature = {
            name: "constexpr" if name in constexprs else ptrs.get(name, "i32")
            for name in fn.arg_names
        }
        targets.append(
            {"fn": fn, "signature": signature, "constexprs": dict(constexprs), **options}
        )
    return targets
