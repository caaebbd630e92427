"""Compiles every attention kernel at the configurations the engine launches, for sm_90 and
sm_80, without a GPU, and prints registers, shared memory and spills per kernel.

Exits 1 if any kernel spills (local-memory stack, STL/LDL in its SASS) or needs more shared
memory than the target offers per block.

    python benchmarks/kernel_resources.py [--capabilities 90 80] [--jobs N]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capabilities", type=int, nargs="+", default=[90, 80])
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(HEAD_DIMS))
    parser.add_argument("--groups", type=int, nargs="+", default=list(GROUPS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    configs = [
        (d, g, DTYPES[dt], cap)
        for cap in args.capabilities
        for dt in args.dtypes
        for d in args.head_dims
        for g in args.groups
    ]
    print(f"{len(configs)} configurations; compiling on {args.jobs} processes", flush=True)
    results = aot.compile_configs(configs, args.jobs)

    header = ("kernel", "head_dim", "group", "dtype", "target", "regs", "shared KB", "limit KB",
              "stack B", "STL", "LDL", "compile s")  # fmt: skip
    print(("{:<24} " + "{:>9} " * (len(header) - 1)).format(*header))
    failures = 0
    for (head_dim, group, dtype, capability), r in sorted(
        results, key=lambda x: (x[1].kernel, -x[0][3], str(x[0][2]), x[0][0], x[0][1])
    ):
        limit = aot.max_shared_bytes(capability)
        bad = r.spills or r.shared_bytes > limit
        failures += bad
        row = (r.kernel, head_dim, group, NAMES[dtype], f"sm_{capability}", r.registers,
               f"{r.shared_bytes / 1024:.1f}", f"{limit / 1024:.0f}", r.stack_bytes,
               r.spill_stores, r.spill_loads, f"{r.compile_s:.1f}")  # fmt: skip
        line = ("{:<24} " + "{:>9} " * (len(row) - 1)).format(*row)
        print(line + ("  <-- FAIL" if bad else ""))
    print(f"{failures} of {len(results)} kernels spill or exceed shared memory")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
