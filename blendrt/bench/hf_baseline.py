"""System (d) of `blendrt bench`: Hugging Face transformers as people serve a blend today.

Each member is loaded once (``AutoModelForCausalLM``) with blendrt's own tokenizer and chat
format, so every prompt holds exactly the ids blendrt renders for that history (a member's own
earlier replies go back as the ``token_ids`` it generated). There is no cache across turns:
each turn prefills the whole rendered history in a ``generate()`` call with a fresh
``DynamicCache``. Closed loop: a conversation arrives at ``conv.arrival``; its turn t + 1 is
ready once turn t's reply is done. Each round takes every ready (conversation, turn), groups
them by the member answering, and runs one left-padded, greedy, batched ``generate()`` per
member of exactly ``max_tokens`` new tokens (EOS neither stops nor is masked).

Token times come from a logits processor that reads ``time.perf_counter()`` at each call: it
runs once per generation step for the whole batch (first right after the prefill forward), so
every row of a batch gets the batch's step times.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from blendrt.bench.metrics import SystemResult, TurnRecord
from blendrt.bench.workload import Workload, messages_for_turn

if TYPE_CHECKING:
    from blendrt.blend import Member

#: (conversation index, turn index) -> (member, reply text, reply ids)
Replies = dict[tuple[int, int], tuple[str, str, list[int]]]


class _StepClock:
    """A logits processor that records when each generation step's logits are ready."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.is_cuda:  # kernels run async: the time the logits really exist
            torch.cuda.synchronize(scores.device)
        self.times.append(time.perf_counter())
        return scores


def _cache_bytes(cache: Any) -> int:
    """Bytes held by a DynamicCache's key and value tensors, over all layers."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _new_cache(transformers: Any, model: Any) -> Any:
    """A DynamicCache as generate() makes one (sliding layers where the config has them)."""
    try:
        return transformers.DynamicCache(config=model.config)
    except TypeError:
        return transformers.DynamicCache()


def _prompt(fmt: Any, workload: Workload, i: int, turn: int, replies: Replies) -> list[int]:
    """The ids blendrt renders for conversation i's `turn`: the whole history, the answering
    member's own earlier replies as the ids it generated."""
    conv = workload.conversations[i]
    messages = messages_for_turn(conv, turn, [replies[i, k][:2] for k in range(turn)])
    for k in range(turn):  # messages: system, user, assistant, user, ...
        if replies[i, k][0] == conv.members[turn]:
            messages[2 + 2 * k]["token_ids"] = replies[i, k][2]
    return fmt.render(messages, add_generation_prompt=True)


def run_transformers(
    workload: Workload,
    members: Sequence[Member],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SystemResult:
    """Serve `workload` with one transformers model per member; see the module docstring."""
    return run_transformers_with_replies(workload, members, device=device, dtype=dtype)[0]


def run_transformers_with_replies(
    workload: Workload,
    members: Sequence[Member],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[SystemResult, Replies]:
    """`run_transformers`, also returning every reply (member, text, generated ids)."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError("the (d) transformers baseline needs `pip install transformers`") from e
    from transformers.generation import utils as gen_utils

    from blendrt.tokenizer.formats import get_chat_format
    from blendrt.tokenizer.tokenizer import load_tokenizer

    # transformers 5.x renamed generate()'s past_key_values (now deprecated) to cache.
    cache_kwarg = (
        "cache" if "cache" in getattr(gen_utils, "ALL_CACHE_NAMES", ()) else "past_key_values"
    )
    by_name = {m.name: m for m in members}
    names = sorted({n for c in workload.conversations for n in c.members})
    if missing := [n for n in names if n not in by_name]:
        raise ValueError(f"the workload uses members not given: {missing}")
    loaded: dict[str, tuple[Any, Any, Any]] = {}  # name -> (model, tokenizer, chat format)
    for name in names:
        m = by_name[name]
        model = transformers.AutoModelForCausalLM.from_pretrained(str(m.path), dtype=dtype)
        model = model.to(device).eval()
        # generate() fills the unset (None) fields of the config it is given from the model's
        # own: a neutral one, so that no EOS, repetition penalty... of the folder applies.
        model.generation_config = transformers.GenerationConfig()
        tok = load_tokenizer(m.path)
        fmt = get_chat_format(tok, m.chat_format, member=m.name, **m.chat_options)
        loaded[name] = (model, tok, fmt)

    n = workload.max_tokens
    records: list[TurnRecord] = []
    replies: Replies = {}
    next_turn = [0] * len(workload.conversations)
    ready_at = [c.arrival for c in workload.conversations]  # seconds since start
    peak_kv = 0
    t0 = time.perf_counter()
    while True:
        now = time.perf_counter() - t0
        pending = [
            i for i, c in enumerate(workload.conversations) if next_turn[i] < len(c.user_messages)
        ]
        if not pending:
            break
        ready = [i for i in pending if ready_at[i] <= now]
        if not ready:
            time.sleep(max(0.0, min(ready_at[i] for i in pending) - now))
            continue
        groups: dict[str, list[int]] = {}
        for i in ready:
            groups.setdefault(workload.conversations[i].members[next_turn[i]], []).append(i)
        for name, rows in groups.items():
            model, tok, fmt = loaded[name]
            prompts = [_prompt(fmt, workload, i, next_turn[i], replies) for i in rows]
            pad = next(t for t in (tok.pad_token_id, tok.eos_token_id, 0) if t is not None)
            width = max(len(p) for p in prompts)
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            # NOTE: as blendrt's ignore_eos: EOS neither stops a reply nor is sampled.
            eos = model.config.eos_token_id  # what blendrt reads from config.json
            eos = [eos] if isinstance(eos, int) else list(eos or [])
            config = transformers.GenerationConfig(
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                eos_token_id=None,
                suppress_tokens=eos or None,
                pad_token_id=pad,
            )
            clock, cache = _StepClock(), _new_cache(transformers, model)
            with torch.inference_mode():
                out = model.generate(
                    input_ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=config,
                    **{cache_kwarg: cache},
                    logits_processor=transformers.LogitsProcessorList([clock]),
                )
            done = time.perf_counter() - t0
            peak_kv = max(peak_kv, _cache_bytes(cache))
            del cache
            if out.shape[1] != width + n or len(clock.times) != n:
                raise RuntimeError(
                    f"{name}: generate() made {out.shape[1] - width} tokens, "
                    f"{len(clock.times)} steps; expected {n}"
                )
            times = [t - t0 for t in clock.times]
            for row, (i, prompt) in enumerate(zip(rows, prompts, strict=True)):
                conv, turn = workload.conversations[i], next_turn[i]
                ids = out[row, width:].tolist()
                replies[i, turn] = (name, tok.decode(ids, skip_special_tokens=True), ids)
                records.append(
                    TurnRecord(
                        conversation=i,
                        turn=turn,
                        member=name,
                        switched=turn > 0 and conv.members[turn - 1] != name,
                        prompt_tokens=len(prompt),
                        computed_prompt_tokens=len(prompt),
                        output_tokens=n,
                        submit_time=ready_at[i],
                        token_times=list(times),
                    )
                )
                next_turn[i], ready_at[i] = turn + 1, done
    wall = time.perf_counter() - t0
    records.sort(key=lambda r: (r.conversation, r.turn))
    notes = ["no cache across turns: each turn prefills its whole history"]
    return SystemResult("transformers", records, wall, peak_kv_bytes=peak_kv, notes=notes), replies
