"""CPU decode attention over the shared pool: the C++ kernel against torch ways of doing it.

Per case (a demo-member-like geometry, B sequences of random lengths, pages shuffled in a
pool much larger than the caches so reads come from DRAM), medians of:
  - cpp:     `paged_attention_cpu` (the C++ core; what the torch backend uses on the CPU)
  - padded:  `decode_attention_torch` (gather every page into a padded batch, masked einsum)
  - sdpa:    per sequence, gather its pages, then torch's fused SDPA
  - contig:  SDPA on contiguous K/V of the same size (no paging; a floor for scale)
and the K/V bytes the kernel reads per second.

    python benchmarks/bench_cpu_attention.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from blendrt.cache import KVGeometry, PagePool
from blendrt.ops.cpu.attention import paged_attention_cpu
from blendrt.ops.reference import gather_pages
from blendrt.ops.torch_attention import decode_attention_torch


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def run_case(batch: int, context: int, heads: tuple[int, int], head_dim: int, repeats: int) -> str:
    num_q_heads, num_kv_heads = heads
    gen = torch.Generator().manual_seed(0)
    geometry = KVGeometry(4, num_kv_heads, head_dim, torch.float32)
    pool = PagePool(-(-geometry.bytes_per_token * 16 // 256) * 256, pool_bytes=512 << 20)
    kv = pool.register_member("m", geometry)
    k_cache, v_cache = kv.k_caches[1], kv.v_caches[1]
    tpp = kv.tokens_per_page
    lens = torch.randint(context // 2, context + 1, (batch,), generator=gen, dtype=torch.int32)
    width = -(-int(lens.max()) // tpp)
    pages = torch.randperm(pool.num_pages, generator=gen)[: batch * width]
    tables = pages.view(batch, width).int()
    k_cache[pages] = torch.randn(len(pages), *k_cache.shape[1:], generator=gen)
    v_cache[pages] = torch.randn(len(pages), *v_cache.shape[1:], generator=gen)
    q = torch.randn(batch, num_q_heads, head_dim, generator=gen)
    cu = torch.arange(batch + 1, dtype=torch.int32)
    scale = head_dim**-0.5
    max_len = int(lens.max())

    def per_sequence_sdpa() -> None:
        for b in range(batch):
            n = int(lens[b])
            k = gather_pages(k_cache, tables[b], n).transpose(0, 1)[None]
            v = gather_pages(v_cache, tables[b], n).transpose(0, 1)[None]
            F.scaled_dot_product_attention(q[b, :, None][None], k, v, scale=scale, enable_gqa=True)

    flat_k = torch.randn(batch, num_kv_heads, max_len, head_dim, generator=gen)
    times = {
        "cpp": median_ms(
            lambda: paged_attention_cpu(q, k_cache, v_cache, tables, cu, lens, scale), repeats
        ),
        "padded": median_ms(
            lambda: decode_attention_torch(q, k_cache, v_cache, tables, lens, max_len, scale),
            repeats,
        ),
        "sdpa": median_ms(per_sequence_sdpa, repeats),
        "contig": median_ms(
            lambda: F.scaled_dot_product_attention(
                q[:, :, None], flat_k, flat_k, scale=scale, enable_gqa=True
            ),
            repeats,
        ),
    }
    kv_bytes = 2 * int(lens.sum()) * num_kv_heads * head_dim * 4
    gbps = kv_bytes / times["cpp"] / 1e6
    return (
        f"| {batch} | {context} | {num_q_heads}/{num_kv_heads}x{head_dim} | "
        + " | ".join(f"{times[k]:.3f}" for k in ("cpp", "padded", "sdpa", "contig"))
        + f" | {times['padded'] / times['cpp']:.1f}x | {times['sdpa'] / times['cpp']:.1f}x"
        + f" | {gbps:.1f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 11, 32])
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| batch | context (max) | heads q/kv x dim | cpp ms | padded ms | sdpa ms | contig ms "
        "| padded/cpp | sdpa/cpp | cpp GB/s |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for heads, head_dim in (((6, 6), 32), ((4, 2), 48)):
        for batch in args.batches:
            for context in args.contexts:
                print(run_case(batch, context, heads, head_dim, args.repeats), flush=True)


if __name__ == "__main__":
    main()
