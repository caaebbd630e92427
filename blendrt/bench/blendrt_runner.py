"""Systems (a)-(c) of the benchmark: blendrt with one shared pool and prefix caching, without
prefix caching, and with the same pool bytes split statically, one part per member.

Each conversation is an asyncio task that sends its whole history every turn, as a stateless
client would; turns go through Blend.prepare (member pinned by the workload) and the engine
loop, and every output token is timestamped on the engine thread as it is produced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

from blendrt.bench.metrics import SystemResult, TurnRecord
from blendrt.bench.workload import Conversation, Workload, messages_for_turn
from blendrt.blend import Blend, Member
from blendrt.config import EngineConfig
from blendrt.engine.request import RequestOutput
from blendrt.models.loaded import LoadedModel
from blendrt.sampling import SamplingParams

#: {system name: engine settings on top of the bench's base config}
SYSTEMS = {
    "blendrt": dict(),
    "blendrt-no-cache": dict(enable_prefix_caching=False),
    "blendrt-static-pools": dict(pool_partition="static"),
}


def _fixed_length(workload: Workload) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=workload.max_tokens, ignore_eos=True)


async def _turn(
    blend: Blend,
    messages: list[dict],
    member: str,
    sampling: SamplingParams,
    record: TurnRecord,
    start: float,
) -> RequestOutput:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[RequestOutput] = loop.create_future()
    texts: list[str] = []

    def sink(out: RequestOutput) -> None:  # runs on the engine thread, right after a step
        now = time.perf_counter() - start
        record.token_times.extend(now for _ in out.new_token_ids)
        texts.append(out.delta_text)
        if out.finished:
            loop.call_soon_threadsafe(done.set_result, out)

    turn = blend.prepare(messages, member=member, sampling=sampling)
    record.prompt_tokens = len(turn.prompt_ids)
    record.submit_time = time.perf_counter() - start
    await asyncio.wrap_future(blend.submit(turn, sink))
    out = await done
    if out.error:
        raise RuntimeError(out.error)
    record.computed_prompt_tokens = out.num_prompt_tokens - out.num_cached_tokens
    record.output_tokens = out.num_output_tokens
    blend.remember(member, "".join(texts), out.reply_token_ids or ())
    return dataclasses.replace(out, delta_text="".join(texts))


async def _conversation(
    blend: Blend,
    index: int,
    conv: Conversation,
    workload: Workload,
    start: float,
    records: list[TurnRecord],
) -> None:
    await asyncio.sleep(max(0.0, conv.arrival - (time.perf_counter() - start)))
    replies: list[tuple[str, str]] = []
    for turn, member in enumerate(conv.members):
        record = TurnRecord(
            index, turn, member, turn > 0 and conv.members[turn - 1] != member, 0, 0, 0, 0.0
        )
        records.append(record)
        out = await _turn(
            blend,
            messages_for_turn(conv, turn, replies),
            member,
            _fixed_length(workload),
            record,
            start,
        )
        replies.append((member, out.delta_text))


def run_blendrt(
    name: str,
    workload: Workload,
    members: Sequence[Member],
    base: EngineConfig,
    models: dict[str, LoadedModel],
) -> SystemResult:
    """Serves the workload on one of SYSTEMS; models are shared between systems."""
    config = dataclasses.replace(base, **SYSTEMS[name])
    records: list[TurnRecord] = []
    with Blend(members, config=config, models=models) as blend:

        async def main() -> float:
            start = time.perf_counter()
            await asyncio.gather(
                *(
                    _conversation(blend, i, conv, workload, start, records)
                    for i, conv in enumerate(workload.conversations)
                )
            )
            return time.perf_counter() - start

        wall = asyncio.run(main())
        stats = blend.stats()
    page_bytes = stats["pool"]["page_bytes"]
    return SystemResult(
        name=name,
        turns=sorted(records, key=lambda r: (r.conversation, r.turn)),
        wall_seconds=wall,
        peak_kv_bytes=stats["pool"]["peak_pages_in_use"] * page_bytes,
        pool_bytes=stats["pool"]["num_pages"] * page_bytes,
        prefix_hit_rate=stats["prefix_hit_rate"],
        num_preemptions=stats["preemptions"],
    )


def _last_turns(blend: Blend, workload: Workload) -> list:
    """Every conversation of the workload at its last turn (earlier replies: filler text)."""
    last = workload.num_turns - 1
    filler = [(m, "Fine thanks, and you?") for m in workload.member_names]
    history = [filler[t % len(filler)] for t in range(last)]
    return [
        blend.prepare(
            messages_for_turn(c, last, history),
            member=c.members[last],
            sampling=_fixed_length(workload),
        )
        for c in workload.conversations
    ]


def probe_pool_bytes(
    workload: Workload,
    members: Sequence[Member],
    base: EngineConfig,
    models: dict[str, LoadedModel],
    conversations: int = 12,
) -> int:
    """Pool bytes that hold about `conversations` last turns of the average member."""
    with Blend(members, config=base, models=models) as blend:
        turns = _last_turns(blend, workload)
        per_token = {n: m.geometry.bytes_per_token for n, m in models.items()}
        need = [(len(t.prompt_ids) + workload.max_tokens) * per_token[t.member] for t in turns]
    return int(conversations * sum(need) / len(need))


def max_concurrent_without_preemption(
    name: str,
    workload_of: Callable[[int], Workload],
    members: Sequence[Member],
    base: EngineConfig,
    models: dict[str, LoadedModel],
    *,
    limit: int = 512,
) -> int:
    """The most conversations, all sending their last turn at once (their whole history as
    the prompt; `workload_of(n)` makes n of them), that the system runs all at the same time
    to the end without a single preemption. The token budget admits every request in one
    step if memory allows, so memory alone decides. Found by bisection; each probe is a
    fresh engine."""
    config = dataclasses.replace(
        base, max_num_seqs=limit, max_num_batched_tokens=1 << 30, **SYSTEMS[name]
    )

    def fits(n: int) -> bool:
        with Blend(members, config=config, models=models) as blend:
            try:
                futures = [
                    blend.submit(t, lambda out: None) for t in _last_turns(blend, workload_of(n))
                ]
                for f in futures:
                    f.result()
            except ValueError:  # a member's part of the pool cannot hold one conversation
                return False
            while (s := blend.stats())["requests_running"] + s["requests_waiting"]:
                time.sleep(0.01)
            return s["preemptions"] == 0 and s["peak_requests_running"] == n

    lo, hi = 0, limit  # fits(lo) holds; find the largest n that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
