"""Compiles every attention kernel at the configurations the engine launches, and the
quantized matmul kernels at representative Llama-7B shapes, for sm_90 and sm_80, without a
GPU, and prints registers, shared memory and spills per kernel. Attention kernels are listed
per variant: the KV cache's element type and soft-capped scores are constexprs (a compile
each); a sliding window is a runtime argument of every one of them.

Exits 1 if any kernel spills (local-memory stack, STL/LDL in its SASS) or needs more shared
memory than the target offers per block.

    python benchmarks/kernel_resources.py [--capabilities 90 80] [--jobs N]
        [--families attention quant_matmul]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from blendrt.ops import aot

HEAD_DIMS = (64, 80, 96, 128, 256)
GROUPS = (1, 2, 4, 8)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
NAMES = {v: k for k, v in DTYPES.items()}
#: Quantized matmuls: (K, N) of attention/o_proj, gate/up and down in Llama-7B; decode (1),
#: the largest decode-kernel batch (16) and a prefill (128) token count.
QUANT_SHAPES = ((4096, 4096), (4096, 11008), (11008, 4096))
QUANT_TOKENS = (1, 16, 128)
QUANT_SCHEMES = ("int8", "int4-g128", "int4-g128-zp")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capabilities", type=int, nargs="+", default=[90, 80])
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(HEAD_DIMS))
    parser.add_argument("--groups", type=int, nargs="+", default=list(GROUPS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--families", nargs="+", default=list(aot.FAMILIES),
                        choices=list(aot.FAMILIES))  # fmt: skip
    args = parser.parse_args()
    failures = total = 0
    if "attention" in args.families:
        failures, total = attention(args)
    if "quant_matmul" in args.families:
        failed, compiled = quant_matmul(args)
        failures, total = failures + failed, total + compiled
    if len(args.families) > 1:
        print(f"{failures} of {total} kernels in all spill or exceed shared memory")
    return 1 if failures else 0


USAGE = ("target", "regs", "shared KB", "limit KB", "stack B", "STL", "LDL", "compile s")


def _row(cells: tuple, first: int = 24) -> str:
    return (f"{{:<{first}}} " + "{:>9} " * (len(cells) - 1)).format(*cells)


def _usage(r: aot.KernelResources) -> tuple[bool, tuple]:
    """Whether the kernel fails (spills, too much shared memory), and its table cells."""
    limit = aot.max_shared_bytes(r.capability)
    cells = (f"sm_{r.capability}", r.registers, f"{r.shared_bytes / 1024:.1f}",
             f"{limit / 1024:.0f}", r.stack_bytes, r.spill_stores, r.spill_loads,
             f"{r.compile_s:.1f}")  # fmt: skip
    return r.spills or r.shared_bytes > limit, cells


def attention(args: argparse.Namespace) -> tuple[int, int]:
    configs = [
        (d, g, DTYPES[dt], cap)
        for cap in args.capabilities
        for dt in args.dtypes
        for d in args.head_dims
        for g in args.groups
    ]
    print(f"{len(configs)} configurations; compiling on {args.jobs} processes", flush=True)
    results = aot.compile_configs(configs, args.jobs)

    print(_row(("kernel", f"{'variant':<31}", "head_dim", "group", "dtype", *USAGE)))
    failures = 0
    for (head_dim, group, dtype, _), r in sorted(
        results,
        key=lambda x: (x[1].kernel, x[1].variant, -x[0][3], str(x[0][2]), x[0][0], x[0][1]),
    ):
        bad, cells = _usage(r)
        failures += bad
        row = (r.kernel, f"{r.variant:<31}", head_dim, group, NAMES[dtype], *cells)
        print(_row(row) + "  <-- FAIL" * bad)
    print(f"{failures} of {len(results)} kernels spill or exceed shared memory")
    return failures, len(results)


def quant_matmul(args: argparse.Namespace) -> tuple[int, int]:
    """One row per distinct compile, under the first configuration that launches it (the
    zero-point schemes read the same kernels as the symmetric ones)."""
    configs = [
        (k, n, t, scheme, DTYPES[dt], cap)
        for cap in args.capabilities
        for dt in args.dtypes
        for k, n in QUANT_SHAPES
        for t in QUANT_TOKENS
        for scheme in QUANT_SCHEMES
    ]
    print(f"{len(configs)} quantized matmul configurations; compiling on {args.jobs} processes")
    results = aot.compile_configs(configs, args.jobs, family="quant_matmul")
    print(_row(("kernel", "K", "N", "T", "scheme", "dtype", *USAGE), 21))
    failures = 0
    for (k, n, t, scheme, dtype, _), r in sorted(
        results, key=lambda x: (x[1].kernel, -x[0][5], x[0][2], x[0][3], str(x[0][4]), x[0][:2])
    ):
        bad, cells = _usage(r)
        failures += bad
        print(_row((r.kernel, k, n, t, scheme, NAMES[dtype], *cells), 21) + "  <-- FAIL" * bad)
    print(f"{failures} of {len(results)} quantized matmul kernels spill or exceed shared memory")
    return failures, len(results)


if __name__ == "__main__":
    sys.exit(main())
