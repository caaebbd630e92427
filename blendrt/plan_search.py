"""What fits before anyone loads weights (`blendrt plan`), part 2: a mix (each member's weight
precision, the blend's KV cache dtype) on a device of a given size, and the search for the
cheapest mix that fits. Part 1, the members' shapes and byte counts: blendrt/plan.py.

Memory, as `engine.memory.pool_pages` sizes it on a GPU: the blend may use utilization x
total; the pool gets that less the weights and `activation_reserve_bytes` (the largest step's
hidden states and logits, at EngineConfig's max_num_batched_tokens and max_num_seqs), at most
the memory free (total less the weights and an estimated CUDA context) less that reserve.

Conversations: a member holds at most its window of a conversation of `context` tokens (the
rest is truncated), in ceil(tokens / its tokens per page) pages. "Alone": the conversations
the pool holds if all were that member's. Blended: pages / the draw-weighted mean pages per
conversation (the member answering a turn holds the conversation; the others' cached prefixes
are evictable). "All cached", the worst case: pages / the sum, every member keeping every
conversation cached.

The search (`cheapest_mix`) tries each member at bf16, int8 or int4-g128 and the KV cache at
auto or int8, cheapest first by `mix_cost`, and returns the first mix that fits with at least
`min_conversations` blended conversations.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from blendrt.cache.pool import page_bytes_for
from blendrt.config import EngineConfig
from blendrt.engine.memory import activation_reserve_bytes, kv_cache_bytes_for_utilization
from blendrt.models.config import LIMITS, ModelConfig
from blendrt.ops.quant import QuantScheme
from blendrt.plan import (
    MAX_DEVICE_BYTES,
    MODEL_DTYPE,
    MemberShapes,
    kv_geometry,
    precision_ok,
    weight_bytes,
)

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # engine.memory.pool_pages' default on CUDA
#: Estimate of what the process holds outside torch's allocator (CUDA context, cuBLAS and
#: Triton modules): ~0.3-0.6 GiB on CUDA 12. It binds only when utilization is near 1.
CUDA_CONTEXT_BYTES = 512 << 20
DEFAULT_MIN_CONVERSATIONS = 8
SEARCH_PRECISIONS = ("bf16", "int8", "int4-g128")
SEARCH_KV_DTYPES = ("auto", "int8")
MAX_SEARCH_MEMBERS = 8  # every mix of up to 8 members: 3^8 x 2 at most


@dataclass(frozen=True)
class _Sized:
    """What `activation_reserve_bytes` reads of a LoadedModel: its config and dtype."""

    config: ModelConfig
    dtype: torch.dtype


@dataclass(frozen=True)
class MemberPlan:
    name: str
    precision: str
    weight_bytes: int
    kv_bytes_per_token: int
    tokens_per_page: int
    conversation_tokens: int  # min(context, the member's window)
    pages_per_conversation: int
    tokens_alone: int  # tokens the pool holds if it were this member's alone
    conversations_alone: int
    draw_weight: float  # normalised


@dataclass(frozen=True)
class BlendPlan:
    gpu_memory: int
    gpu_memory_utilization: float
    kv_cache_dtype: str
    context: int | None  # None: each member's window
    weight_bytes: int
    activation_reserve: int
    cuda_context: int
    pool_bytes: int
    page_bytes: int
    num_pages: int
    conversations: int  # blended, by draw weight
    conversations_all_cached: int
    min_conversations: int
    fits: bool
    members: tuple[MemberPlan, ...]
    flags: tuple[str, ...]  # the serve/chat flags for this mix (none: the defaults)


def _positive_int(name: str, value: object, high: int) -> int:
    if type(value) is not int or not 1 <= value <= high:
        raise ValueError(f"{name} must be an int in [1, {high}], got {value!r}")
    return value


def plan_blend(
    members: Sequence[MemberShapes],
    *,
    gpu_memory: int,
    context: int | None = None,
    quantization: Mapping[str, str] | None = None,
    kv_cache_dtype: str = "auto",
    draw_weights: Mapping[str, float] | None = None,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    max_num_seqs: int = EngineConfig.max_num_seqs,
    max_num_batched_tokens: int = EngineConfig.max_num_batched_tokens,
    min_conversations: int = DEFAULT_MIN_CONVERSATIONS,
) -> BlendPlan:
    """The blend with `quantization` ({name: QuantScheme name}) and `kv_cache_dtype` on a
    device of `gpu_memory` bytes, holding conversations of `context` tokens."""
    names = [m.name for m in members]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"a plan needs members with distinct names, got {names}")
    for flag, given in (("--quantization", quantization), ("--weight", draw_weights)):
        if unknown := sorted(set(given or {}) - set(names)):
            raise ValueError(f"{flag} names no member: {', '.join(unknown)}")
    _positive_int("gpu_memory", gpu_memory, MAX_DEVICE_BYTES)
    if context is not None:
        _positive_int("context", context, LIMITS["max_position_embeddings"])
    _positive_int("max_num_seqs", max_num_seqs, 1 << 20)
    _positive_int("max_num_batched_tokens", max_num_batched_tokens, 1 << 24)
    _positive_int("min_conversations", min_conversations, 1 << 30)
    if type(gpu_memory_utilization) not in (int, float) or not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    draw = {n: float((draw_weights or {}).get(n, 1.0)) for n in names}
    if not all(math.isfinite(w) and w >= 0 for w in draw.values()) or not sum(draw.values()):
        raise ValueError(f"--weight values must be finite, >= 0 and not all 0, got {draw}")
    quant = {n: QuantScheme.parse(s).name for n, s in (quantization or {}).items()}
    for m in members:
        if m.name in quant and m.checkpoint is not None:
            raise ValueError(f"{m.name} is already a {m.precision} checkpoint: no --quantization")
    precision = {m.name: quant.get(m.name, m.precision) for m in members}
    weights = [weight_bytes(m, precision[m.name]) for m in members]
    geometries = [kv_geometry(m, kv_cache_dtype) for m in members]
    page = page_bytes_for(geometries, EngineConfig.min_tokens_per_page)
    sized = [_Sized(m.config, MODEL_DTYPE) for m in members]
    reserve = activation_reserve_bytes(sized, max_num_batched_tokens, max_num_seqs)
    used = sum(weights)
    try:
        pool = kv_cache_bytes_for_utilization(
            gpu_memory_utilization,
            total=gpu_memory,
            free=gpu_memory - CUDA_CONTEXT_BYTES - used,
            used=used,
            reserve=reserve,
        )
    except ValueError:  # nothing left for the pool
        pool = 0
    pages, total_draw = pool // page, sum(draw.values())
    plans = []
    for m, w, g in zip(members, weights, geometries, strict=True):
        tpp = page // g.bytes_per_token
        window = m.config.max_position_embeddings
        tokens = min(context or window, window)
        ppc = -(-tokens // tpp)
        plans.append(
            MemberPlan(
                name=m.name,
                precision=precision[m.name],
                weight_bytes=w,
                kv_bytes_per_token=g.bytes_per_token,
                tokens_per_page=tpp,
                conversation_tokens=tokens,
                pages_per_conversation=ppc,
                tokens_alone=pages * tpp,
                conversations_alone=pages // ppc,
                draw_weight=draw[m.name] / total_draw,
            )
        )
    mean_pages = sum(p.draw_weight * p.pages_per_conversation for p in plans)
    conversations = int(pages // mean_pages)
    flags = [f"--quantization {n}={quant[n]}" for n in names if n in quant]
    if kv_cache_dtype != "auto":
        flags.append(f"--kv-cache-dtype {kv_cache_dtype}")
    return BlendPlan(
        gpu_memory=gpu_memory,
        gpu_memory_utilization=float(gpu_memory_utilization),
        kv_cache_dtype=kv_cache_dtype,
        context=context,
        weight_bytes=used,
        activation_reserve=reserve,
        cuda_context=CUDA_CONTEXT_BYTES,
        pool_bytes=pool,
        page_bytes=page,
        num_pages=pages,
        conversations=conversations,
        conversations_all_cached=pages // sum(p.pages_per_conversation for p in plans),
        min_conversations=min_conversations,
        fits=pages > 0 and conversations >= min_conversations,
        members=tuple(plans),
        flags=tuple(flags),
    )


def mix_cost(members: Sequence[MemberShapes], precisions: Sequence[str], kv: str) -> tuple:
    """A mix's quality cost, compared as a tuple: fewer int4 members, then fewer int8 ones,
    then KV in the model dtype before int8 KV (so int8 KV comes before int8 weights, and those
    before int4); at equal counts, the largest members quantized first (big models lose the
    least). Members loaded from GPTQ/AWQ checkpoints have no choice and cost nothing."""
    chosen = [
        (m.params, p) for m, p in zip(members, precisions, strict=True) if m.checkpoint is None
    ]
    int4 = [params for params, p in chosen if p.startswith("int4")]
    int8 = [params for params, p in chosen if p == "int8"]
    return (len(int4), len(int8), kv != "auto", -sum(int4), -sum(int8))


def cheapest_mix(members: Sequence[MemberShapes], **kwargs: Any) -> BlendPlan | None:
    """The cheapest mix (by `mix_cost`) that fits, planned with `plan_blend(**kwargs)`; None
    if even every member at int4-g128 with int8 KV does not. Beyond MAX_SEARCH_MEMBERS
    members, only mixes with every float member at the same precision are tried."""
    choices = [
        [m.precision]
        if m.checkpoint is not None
        else [p for p in SEARCH_PRECISIONS if precision_ok(m, p)]
        for m in members
    ]
    if len(members) <= MAX_SEARCH_MEMBERS:
        combos = list(itertools.product(*choices))
    else:  # too many mixes: every float member at one precision
        combos = [
            tuple(p if m.checkpoint is None else m.precision for m in members)
            for p in SEARCH_PRECISIONS
            if all(m.checkpoint is not None or precision_ok(m, p) for m in members)
        ]
    mixes = [(p, kv) for kv in SEARCH_KV_DTYPES for p in combos]
    mixes.sort(key=lambda mix: mix_cost(members, [*mix[0]], mix[1]))
    for precisions, kv in mixes:
        quantization = {
            m.name: p
            for m, p in zip(members, precisions, strict=True)
            if m.checkpoint is None and p != "bf16"
        }
        plan = plan_blend(members, quantization=quantization, kv_cache_dtype=kv, **kwargs)
        if plan.fits:
            return plan
    return None
