"""The blended multi-turn workload over the OpenAI API, as a chat platform's users send it.

`in_flight` users each take the next conversation and play it turn by turn, no think time:
each turn sends the whole history (persona as the system message, every earlier turn, the
replies as that system generated them) to the member drawn for the turn, streams the reply
(fixed length: max_tokens with EOS ignored) and records when its first text came, its usage
(prompt, cached and completion tokens) and any failure: an HTTP error, an error event, or a
reply cut short of max_tokens. A user whose turn failed goes on with the next message, so
both systems are offered the same turns.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import httpx

from blendrt.bench.workload import Conversation, Workload
from peers.systems import System


@dataclass
class TurnResult:
    conversation: int
    turn: int
    member: str
    ttft: float | None  # seconds from sending to the first reply text
    latency: float
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    retries: int = 0  # connection-level retries (a closed kept-alive connection)


def _body(model: str, messages: list[dict], max_tokens: int, seed: int) -> dict:
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.8,
        "top_p": 1.0,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _turn(
    client: httpx.AsyncClient, system: System, member: str, messages: list[dict],
    max_tokens: int, seed: int, result: TurnResult,
) -> str:  # fmt: skip
    """Streams one reply into `result`; returns its text."""
    url, model = system.endpoints[member]
    start, text = time.perf_counter(), []
    body = _body(model, messages, max_tokens, seed)
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
            return ""
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                result.error = f"error event: {str(chunk['error'])[:200]}"
                continue
            for choice in chunk.get("choices", ()):
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    if result.ttft is None:
                        result.ttft = time.perf_counter() - start
                    text.append(delta)
            if usage := chunk.get("usage"):
                result.prompt_tokens = usage["prompt_tokens"]
                result.completion_tokens = usage["completion_tokens"]
                details = usage.get("prompt_tokens_details") or {}
                result.cached_tokens = details.get("cached_tokens") or 0
    result.latency = time.perf_counter() - start
    if result.error is None and result.completion_tokens < max_tokens:
        result.error = f"cut: {result.completion_tokens} of {max_tokens} tokens"
    return "".join(text)


async def _conversation(
    client: httpx.AsyncClient, system: System, index: int, conv: Conversation,
    max_tokens: int, results: list[TurnResult],
) -> None:  # fmt: skip
    messages: list[dict] = [{"role": "system", "content": conv.persona}]
    for turn, (user, member) in enumerate(zip(conv.user_messages, conv.members, strict=True)):
        messages.append({"role": "user", "content": user})
        result = TurnResult(index, turn, member, None, 0.0)
        for attempt in (1, 2):
            try:
                reply = await _turn(
                    client, system, member, messages, max_tokens, index * 1000 + turn, result
                )
                break
            except httpx.RemoteProtocolError as e:
                # NOTE: a kept-alive connection the server closed as the request went out
                # (llama-server closes them after a few requests): retried once, as
                # OpenAI's client does; counted.
                result.retries += 1
                result.error, reply = f"{type(e).__name__}: {e}", ""
                if attempt == 1 and result.ttft is None:
                    result.error = None
                    continue
                break
            except httpx.HTTPError as e:
                result.error, reply = f"{type(e).__name__}: {e}", ""
                break
        results.append(result)
        if result.error is None:
            messages.append({"role": "assistant", "content": reply})
        # else the user goes on without that reply (the next message follows theirs)


async def run_workload(
    system: System, workload: Workload, in_flight: int
) -> tuple[list[TurnResult], float]:
    """Plays every conversation; (per-turn results, wall seconds)."""
    results: list[TurnResult] = []
    queue = list(enumerate(workload.conversations))
    limits = httpx.Limits(max_connections=4 * in_flight)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def user() -> None:
            while queue:
                index, conv = queue.pop(0)
                await _conversation(client, system, index, conv, workload.max_tokens, results)

        start = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(in_flight)))
        return results, time.perf_counter() - start


def warm_up(system: System) -> None:
    """One short request per member, so lazy initialisation is not timed."""

    async def go() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
            for member in system.endpoints:
                messages = [{"role": "user", "content": "warm up"}]
                result = TurnResult(0, 0, member, None, 0.0)
                await _turn(client, system, member, messages, 2, 0, result)

    asyncio.run(go())
