"""Ahead-of-time compiles of the attention and quantized matmul kernels for sm_90 and sm_80
(no GPU needed): a representative subset of what the engine launches, every variant of the
attention kernels (KV cache type, soft-capped scores; the sliding window is a runtime
argument of all), with no register spills and shared memory within each target's limit.
benchmarks/kernel_resources.py checks every config."""

from __future__ import annotations

import os

import pytest
import torch

from blendrt.ops import aot

#: (head_dim, group, dtype, capability): every head dim, every GQA group, both half types,
#: and the largest tiles on sm_80.
SUBSET: list[aot.Config] = [
    (64, 1, torch.float16, 90),
    (80, 2, torch.bfloat16, 90),
    (96, 8, torch.float16, 90),
    (128, 4, torch.bfloat16, 90),
    (256, 8, torch.bfloat16, 90),
    (128, 1, torch.float16, 80),
    (256, 4, torch.bfloat16, 80),
]


#: (K, N, tokens, scheme, dtype, capability): the decode GEMV (1 token), the decode dot (16),
#: the prefill GEMM (128), int8 and int4 with and without zero points, on both targets.
QUANT_SUBSET: list[aot.QuantConfig] = [
    (4096, 4096, 1, "int4-g128", torch.float16, 90),
    (11008, 4096, 16, "int8", torch.bfloat16, 90),
    (4096, 11008, 128, "int4-g128-zp", torch.bfloat16, 90),
    (4096, 4096, 1, "int8", torch.bfloat16, 80),
    (11008, 4096, 16, "int4-g32-zp", torch.float16, 80),
    (4096, 11008, 128, "int4-g128", torch.float16, 80),
]


@pytest.fixture(scope="module")
def compiled() -> list[tuple[aot.Config, aot.KernelResources]]:
    return aot.compile_configs(SUBSET, jobs=os.cpu_count() or 1)


@pytest.fixture(scope="module")
def quant_compiled() -> list[tuple[aot.QuantConfig, aot.KernelResources]]:
    return aot.compile_configs(QUANT_SUBSET, jobs=os.cpu_count() or 1, family="quant_matmul")


def test_every_kernel_compiles(compiled) -> None:
    kernels = {r.kernel for _, r in compiled}
    assert {"_store_kv_kernel", "_extend_attention_kernel", "_decode_split_kernel"} <= kernels
    assert {r.capability for _, r in compiled} == {80, 90}
    for kernel in ("_extend_attention_kernel", "_decode_split_kernel"):
        variants = {(r.variant, r.capability) for _, r in compiled if r.kernel == kernel}
        assert variants == {
            (f"KV_DTYPE={kv} SOFTCAP={softcap}", capability)
            for kv in ("auto", "int8", "fp8_e4m3")
            for softcap in (False, True)
            for capability in (80, 90)
        }


def test_every_quant_matmul_kernel_compiles(quant_compiled) -> None:
    kernels = {r.kernel for _, r in quant_compiled}
    assert kernels == {"_quant_decode_kernel", "_quant_gemm_kernel", "_split_sum_kernel"}
    assert {r.capability for _, r in quant_compiled} == {80, 90}


@pytest.mark.parametrize("family", ["compiled", "quant_compiled"])
def test_no_spills_and_shared_memory_fits(family, request) -> None:
    for config, r in request.getfixturevalue(family):
        where = f"{r.kernel} at {config}"
        assert r.registers <= 255, where
        assert not r.spills, f"{where} spills: {r}"
        assert r.shared_bytes <= aot.max_shared_bytes(r.capability), f"{where}: {r}"


def test_parse_resource_usage() -> None:
    text = (
        "Resource usage:\n Common:\n  GLOBAL:0\n Function _k:\n"
        "  REG:168 STACK:16 SHARED:0 LOCAL:0 CONSTANT[0]:624 TEXTURE:0 SURFACE:0 SAMPLER:0\n"
    )
    assert aot.parse_resource_usage(text) == {"REG": 168, "STACK": 16, "SHARED": 0, "LOCAL": 0}
