"""Ahead-of-time compiles of the kernels and their resource usage, without a GPU.

Each kernel module exposes `aot_targets(head_dim, group, dtype) -> list[dict]`: for every
kernel its launcher launches at that configuration, a dict with `fn`, `signature` (arg name ->
"*fp16" | "*i32" | "i32" | "fp32" | "constexpr"), `constexprs`, `num_warps`, `num_stages`,
built from the same config function the launcher uses, and optionally `divisible_by_16`
(int args the launcher's values are multiples of 16 for, as Triton's JIT specializes them).
An aot_targets that also takes a `capability` keyword gets the target's (tiles per target).
`compile_target` compiles one for a `GPUTarget` and reads the cubin's registers, shared
memory and spills with the cuobjdump shipped in the triton wheel.

The attention kernels list one target per compiled variant: the KV cache's element type
(KV_DTYPE) and soft-capped scores (SOFTCAP) are constexprs, each its own compile; a sliding
window is a runtime int, in every one of them. `KernelResources.variant` names the variant.

The quantized matmul kernels form a second family (`compile_configs(..., family=
"quant_matmul")`), configured by (K, N, tokens, scheme name, dtype, capability): their
module's `aot_targets(k, n, tokens, scheme, dtype, capability=...)` follows the same dict
convention.
"""

from __future__ import annotations

import importlib
import inspect
import multiprocessing
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget

#: Opt-in shared memory per block (bytes), what the driver reports as max_shared_mem.
MAX_SHARED_BYTES = {80: 166912, 86: 101376, 89: 101376, 90: 232448}

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"

#: The modules whose kernels the engine launches; decode_attention lands separately.
KERNEL_MODULES = (
    "blendrt.ops.triton.store_kv",
    "blendrt.ops.triton.extend_attention",
    "blendrt.ops.triton.decode_attention",
)


def cuda_target(capability: int) -> GPUTarget:
    return GPUTarget("cuda", capability, 32)


def max_shared_bytes(capability: int) -> int:
    """The target's shared-memory limit: the driver's value when that GPU is present."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        if major * 10 + minor == capability:
            from triton.runtime.driver import driver

            device = torch.cuda.current_device()
            return driver.active.utils.get_device_properties(device)["max_shared_mem"]
    return MAX_SHARED_BYTES[capability]


@dataclass(frozen=True)
class KernelResources:
    kernel: str
    capability: int
    registers: int  # per thread
    shared_bytes: int  # static (cuobjdump) + dynamic (Triton's allocation)
    stack_bytes: int  # local-memory stack frame; spills live here
    spill_stores: int  # STL instructions in the SASS
    spill_loads: int  # LDL instructions in the SASS
    compile_s: float
    variant: str = ""  # the VARIANT_KEYS constexprs, e.g. "KV_DTYPE=int8 SOFTCAP=True"

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0 or self.stack_bytes > 0


#: Constexprs that tell a kernel's compiled variants apart (in reports).
VARIANT_KEYS = ("KV_DTYPE", "SOFTCAP")


def variant_of(target: dict) -> str:
    consts = target["constexprs"]
    return " ".join(f"{k}={consts[k]}" for k in VARIANT_KEYS if k in consts)


def available_targets(
    head_dim: int, group: int, dtype: torch.dtype, capability: int = 90
) -> list[dict]:
    """aot_targets of every kernel module present (decode_attention may not be yet). Modules
    whose aot_targets takes a `capability` keyword pick their tiles per target."""
    targets = []
    for name in KERNEL_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        fn = getattr(module, "aot_targets", None)
        if fn is None:
            continue
        if "capability" in inspect.signature(fn).parameters:
            targets += fn(head_dim, group, dtype, capability=capability)
        else:
            targets += fn(head_dim, group, dtype)
    return targets


def target_key(target: dict) -> tuple:
    """Identical compiles (e.g. store_kv across GQA groups) share a key."""
    return (
        target["fn"].__name__,
        tuple(sorted(target["signature"].items())),
        tuple(sorted((k, str(v)) for k, v in target["constexprs"].items())),
        target["num_warps"],
        target["num_stages"],
        tuple(sorted(target.get("divisible_by_16", ()))),
    )


def _source(target: dict) -> triton.compiler.ASTSource:
    fn, signature = target["fn"], target["signature"]
    # NOTE: Triton 3.6's ASTSource wants every argument in `signature` (constexprs typed
    # "constexpr") and their values in `constexprs`, keyed by name.
    names = fn.arg_names
    missing = set(names) - set(signature)
    if missing:
        raise ValueError(f"{fn.__name__}: signature lacks {sorted(missing)}")
    pinned = [n for n in names if signature[n].startswith("*")]
    pinned += list(target.get("divisible_by_16", ()))
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in pinned}
    return triton.compiler.ASTSource(fn, signature, target["constexprs"], attrs)


def _cuobjdump(args: list[str], cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        done = subprocess.run(
            [str(CUOBJDUMP), *args, f.name], capture_output=True, text=True, check=True
        )
    return done.stdout


def parse_resource_usage(text: str) -> dict[str, int]:
    """The first function's `REG:.. STACK:.. SHARED:.. LOCAL:..` of
    `cuobjdump --dump-resource-usage`."""
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    if "REG" not in fields:
        raise ValueError(f"no resource usage in cuobjdump output:\n{text}")
    return {k: int(v) for k, v in fields.items()}


def compile_target(target: dict, capability: int) -> KernelResources:
    start = time.perf_counter()
    options = dict(num_warps=target["num_warps"], num_stages=target["num_stages"])
    compiled = triton.compile(_source(target), target=cuda_target(capability), options=options)
    elapsed = time.perf_counter() - start
    cubin = compiled.asm["cubin"]
    usage = parse_resource_usage(_cuobjdump(["--dump-resource-usage"], cubin))
    sass = _cuobjdump(["-sass"], cubin)
    return KernelResources(
        kernel=target["fn"].__name__,
        capability=capability,
        registers=usage["REG"],
        shared_bytes=usage.get("SHARED", 0) + compiled.metadata.shared,
        stack_bytes=usage.get("STACK", 0) + usage.get("LOCAL", 0),
        spill_stores=len(re.findall(r"\bSTL(\.\w+)*\b", sass)),
        spill_loads=len(re.findall(r"\bLDL(\.\w+)*\b", sass)),
        compile_s=elapsed,
        variant=variant_of(target),
    )


#: (head_dim, group, dtype, capability): one configuration the engine launches.
Config = tuple[int, int, torch.dtype, int]
#: (K, N, tokens, scheme name, dtype, capability): one quantized matmul the engine launches.
QuantConfig = tuple[int, int, int, str, torch.dtype, int]


def quant_matmul_targets(
    k: int, n: int, tokens: int, scheme: str, dtype: torch.dtype, capability: int = 90
) -> list[dict]:
    """aot_targets of the quantized matmul for x [tokens, k] and an [n, k] weight."""
    from blendrt.ops.quant import QuantScheme
    from blendrt.ops.triton.quant_matmul import aot_targets

    return aot_targets(k, n, tokens, QuantScheme.parse(scheme), dtype, capability=capability)


#: Kernel families: a configuration (capability last) -> the targets it launches.
FAMILIES = {"attention": available_targets, "quant_matmul": quant_matmul_targets}


def _compile_job(job: tuple[str, tuple, int]) -> tuple[tuple, KernelResources]:
    family, config, index = job
    target = FAMILIES[family](*config)[index]
    return config, compile_target(target, config[-1])


def compile_configs(
    configs: list[Config] | list[QuantConfig], jobs: int = 1, family: str = "attention"
) -> list[tuple[tuple, KernelResources]]:
    """Compiles every distinct kernel the configurations of `family` launch, over `jobs`
    processes.

    NOTE: workers are spawned without TRITON_INTERPRET: under the interpreter `@triton.jit`
    gives InterpretedFunctions, which cannot be compiled (tests set it on CPU machines)."""
    unique: dict[tuple, tuple[str, tuple, int]] = {}
    for config in configs:
        for i, target in enumerate(FAMILIES[family](*config)):
            unique.setdefault((config[-1], *target_key(target)), (family, config, i))
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context) as pool:
            return list(pool.map(_compile_job, unique.values()))
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
