"""Tiles, launch options and the split-K rule of the quantized matmul kernels, and the device
facts (multiprocessors, capability) that choose them.

quant_matmul.py launches with these values and its aot_targets compiles the same ones.
NOTE: chosen for no spills and modest shared memory (tests/ops/test_aot.py), not yet
measured on a GPU; tune against benchmarks once one is available.
"""

from __future__ import annotations

import functools

import torch
import triton

#: Up to this many tokens (decode steps, short extends) run the decode-shaped kernel.
MAX_DECODE_TOKENS = 16
#: The decode kernel aims at this many programs per multiprocessor: enough loads in flight.
PROGRAMS_PER_SM = 8
#: A split of K holds at least this many K tiles (unless K itself has fewer).
MIN_TILES_PER_SPLIT = 2
#: Off CUDA (the Triton interpreter) grids stay small.
INTERPRETER_SM_COUNT = 4
#: Multiprocessors of the GPUs the ahead-of-time compiles stand for (H100/H200, A100).
SM_COUNTS = {90: 132, 80: 108}
#: Weight elements of one decode tile (BLOCK_N * BLOCK_K): 2 KB of int4, 4 KB of int8.
DECODE_TILE_ELEMS = 4096
#: Block and launch options of the split-K sum.
SPLIT_SUM = dict(BLOCK=256, num_warps=4, num_stages=1)


def precision(dtype: torch.dtype) -> str:
    # NOTE: float32 dots run as 3xTF32 (about fp32-exact; the int weights are exact in TF32).
    return "tf32x3" if dtype == torch.float32 else "tf32"


@functools.cache
def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.cache
def capability(device: torch.device) -> int:
    if device.type != "cuda":
        return 90  # the interpreter: any config runs
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def block_k(bits: int, group: int | None, largest: int) -> int:
    """int4 K tiles never straddle a group (one scale and zero per row and tile)."""
    return largest if bits == 8 else min(largest, group)


def decode_config(tokens: int, bits: int, group: int | None, dtype: torch.dtype) -> dict[str, int]:
    """T <= MAX_DECODE_TOKENS: one [BLOCK_N, BLOCK_K] weight tile per step against all T rows,
    a GEMV on the CUDA cores at T = 1, else a [16, BLOCK_K] x [BLOCK_K, BLOCK_N] dot. float32
    dots (3xTF32) take half the tile: at full size they need ~255 registers."""
    elems = DECODE_TILE_ELEMS // 2 if dtype == torch.float32 else DECODE_TILE_ELEMS
    bk = block_k(bits, group, 64 if dtype == torch.float32 else 128)
    return dict(
        BLOCK_T=1 if tokens == 1 else 16, BLOCK_N=elems // bk, BLOCK_K=bk,
        num_warps=4, num_stages=2,
    )  # fmt: skip


def gemm_config(
    tokens: int, bits: int, group: int | None, dtype: torch.dtype, capability: int = 90
) -> dict[str, int]:
    """T > MAX_DECODE_TOKENS: [BLOCK_M, BLOCK_K] x [BLOCK_K, BLOCK_N] tiles, fp32 accumulate.

    Up to 64 tokens, 64x32 tiles give N / 32 programs (weight reads still dominate); longer
    prompts take 128x128 tiles on 8 warps, K tiles of 64 on sm_90 (wgmma, ~127 registers)
    and of 32 on sm_80, where mma.sync and the dequantized int4 tile took 246 registers at
    64. float32 (tests, CPU-sized models) runs 3xTF32 dots on small tiles: not a fast path."""
    if dtype == torch.float32:
        bm, bn, bk, warps, stages = 32, 32, 32, 4, 2
    elif tokens <= 64:
        bm, bn, bk, warps, stages = 64, 32, 64, 4, 3
    else:
        bm, bn, bk, warps, stages = 128, 128, 64 if capability >= 90 else 32, 8, 3
    return dict(
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=block_k(bits, group, bk), GROUP_M=8,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip


def split_k(n_blocks: int, k_tiles: int, sms: int, forced: int | None = None) -> tuple[int, int]:
    """(splits, K tiles per split) of the decode grid (n_blocks, splits): enough programs for
    PROGRAMS_PER_SM per multiprocessor, each split >= MIN_TILES_PER_SPLIT tiles; `forced`
    (tests, tuning) asks for a number of splits. Every split gets at least one tile."""
    k_tiles = max(k_tiles, 1)
    if forced is None:
        want = triton.cdiv(PROGRAMS_PER_SM * sms, max(n_blocks, 1))
        forced = min(want, triton.cdiv(k_tiles, MIN_TILES_PER_SPLIT))
    per_split = triton.cdiv(k_tiles, max(1, min(forced, k_tiles)))
    return triton.cdiv(k_tiles, per_split), per_split
