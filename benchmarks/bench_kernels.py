"""Attention kernels against the GPU's own ceilings.

Decode: bytes of K/V read per second, against a device-to-device copy of a large tensor
(bytes read + written per second). Prefill (extend): causal attention TFLOP/s against a
torch bf16 matmul, with torch's SDPA (flash) on contiguous tensors for scale. Pages are a
real PagePool member's views (scattered pages, page stride of a 2-layer member). Each time is
the median of CUDA-event timings after warm-up. Without a GPU it says so and exits 0.

    python benchmarks/bench_kernels.py [--batches 1 4 16 64] [--contexts 512 2048 8192 32768]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys

import torch

GEOMETRY = dict(num_q_heads=32, num_kv_heads=8, head_dim=128)  # Llama-3-8B-like
TOKENS_PER_PAGE = 16


def timed(fn, iters: int = 20, warmup: int = 3) -> float:
    """Median seconds of `fn` over `iters` CUDA-event timings. A GPU-side sleep queued first
    keeps the device busy while the host launches, so host launch overhead is not timed."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1_000_000)  # ~0.5 ms of GPU clock cycles
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / timed(lambda: dst.copy_(src))


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn_like(a)
    return 2 * 8192**3 / timed(lambda: a @ b)


def paged_batch(batch: int, context: int, new_tokens: int, dtype: torch.dtype):
    """A member's layer-1 views with `batch` sequences of `context` tokens on shuffled pages,
    and the metadata of `new_tokens` new queries per sequence."""
    from blendrt.cache import KVGeometry, PagePool

    h_q, h_kv, d = GEOMETRY["num_q_heads"], GEOMETRY["num_kv_heads"], GEOMETRY["head_dim"]
    geometry = KVGeometry(2, h_kv, d, dtype)
    per_seq = -(-context // TOKENS_PER_PAGE)
    pool = PagePool(TOKENS_PER_PAGE * geometry.bytes_per_token, num_pages=batch * per_seq,
                    device="cuda")  # fmt: skip
    pool.buffer.view(dtype).normal_()
    kv = pool.register_member("m", geometry)
    pages = torch.randperm(batch * per_seq, device="cuda").to(torch.int32)
    block_tables = pages.view(batch, per_seq)  # [B, W]
    cu = torch.arange(batch + 1, device="cuda", dtype=torch.int32) * new_tokens  # [B + 1]
    lens = torch.full((batch,), context, device="cuda", dtype=torch.int32)  # [B]
    q = torch.randn(batch * new_tokens, h_q, d, dtype=dtype, device="cuda")  # [T, H_q, D]
    return q, kv.k_caches[1], kv.v_caches[1], block_tables, cu, lens


def decode_point(decode_attention, batch: int, context: int, dtype) -> tuple[float, int]:
    """(seconds, K/V bytes read) of one decode step."""
    q, kc, vc, tables, _, lens = paged_batch(batch, context, 1, dtype)
    run = functools.partial(
        decode_attention, q, kc, vc, tables, lens, q.shape[-1] ** -0.5, max_context_len=context
    )
    return timed(run), 2 * batch * context * kc.shape[2] * kc.shape[3] * kc.element_size()


def bench_decode(batches, contexts, dtype, copy_bw) -> None:
    try:
        from blendrt.ops.triton.decode_attention import decode_attention
    except ImportError as e:
        print(f"decode: skipped ({e})")
        return
    print(f"\ndecode ({dtype}, {GEOMETRY}, tpp={TOKENS_PER_PAGE}); copy {copy_bw / 1e9:.0f} GB/s")
    print(f"{'batch':>6} {'context':>8} {'ms':>9} {'GB/s':>8} {'of copy':>8}")
    for batch in batches:
        for context in contexts:
            seconds, read = decode_point(decode_attention, batch, context, dtype)
            torch.cuda.empty_cache()
            bw = read / seconds
            print(f"{batch:>6} {context:>8} {seconds * 1e3:>9.3f} {bw / 1e9:>8.0f} "
                  f"{bw / copy_bw:>8.0%}")  # fmt: skip


def prefill_point(batch: int, context: int, dtype) -> tuple[float, float]:
    """(seconds of extend_attention, seconds of SDPA on contiguous tensors) for a causal
    prefill of `context` tokens per sequence."""
    import torch.nn.functional as F

    from blendrt.ops.triton.extend_attention import extend_attention

    q, kc, vc, tables, cu, lens = paged_batch(batch, context, context, dtype)
    run = functools.partial(
        extend_attention, q, kc, vc, tables, cu, lens, q.shape[-1] ** -0.5,
        max_query_len=context,
    )  # fmt: skip
    qs = q.view(batch, context, *q.shape[1:]).transpose(1, 2)  # [B, H_q, L, D]
    kvs = torch.randn_like(qs)
    sdpa = functools.partial(F.scaled_dot_product_attention, qs, kvs, kvs, is_causal=True)
    return timed(run), timed(sdpa)


def bench_prefill(batches, contexts, dtype, mm_rate, max_tokens) -> None:
    print(f"\nprefill ({dtype}, causal, {GEOMETRY}); bf16 matmul {mm_rate / 1e12:.0f} TFLOP/s")
    print(f"{'batch':>6} {'context':>8} {'ms':>9} {'TFLOP/s':>8} {'of mm':>7} {'sdpa':>7}")
    h_q, d = GEOMETRY["num_q_heads"], GEOMETRY["head_dim"]
    for batch in batches:
        for context in contexts:
            if batch * context > max_tokens:
                continue
            seconds, sdpa = prefill_point(batch, context, dtype)
            torch.cuda.empty_cache()
            flops = 4 * batch * h_q * d * context * (context + 1) / 2  # causal: QK^T and PV
            rate = flops / seconds
            print(f"{batch:>6} {context:>8} {seconds * 1e3:>9.3f} {rate / 1e12:>8.0f} "
                  f"{rate / mm_rate:>7.0%} {flops / sdpa / 1e12:>7.0f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 8192, 32768])
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--max-prefill-tokens", type=int, default=1 << 17,
                        help="skip prefill points with more tokens in the batch")  # fmt: skip
    parser.add_argument("--skip", choices=["decode", "prefill"], nargs="*", default=[])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA GPU here; nothing to measure")
        return 0
    dtype = getattr(torch, args.dtype)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    if "decode" not in args.skip:
        bench_decode(args.batches, args.contexts, dtype, copy_bandwidth())
    if "prefill" not in args.skip:
        bench_prefill(args.batches, args.contexts, dtype, matmul_rate(), args.max_prefill_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
