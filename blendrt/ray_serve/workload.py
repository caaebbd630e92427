"""A multi-turn chat workload sent to an OpenAI-compatible endpoint, measuring what routing
does to the caches: the prefix-cache hit rate (cached / prompt tokens, from each answer's
usage) and the time to first token, per turn. Stateless clients: every turn resends the
whole history. Standard library only (http.client); used by tests/ray and
benchmarks/bench_ray_affinity.py.
"""

from __future__ import annotations

import http.client
import json
import random
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

USER_LINES = (
    "hello there, how are you today?",
    "what do you like to do on weekends?",
    "tell me about your favourite food.",
    "do you like music? which kind?",
    "what was the best trip you ever took?",
    "what are you reading these days?",
    "any plans for the evening?",
)


@dataclass
class Turn:
    conversation: int
    index: int
    status: int
    replica: str | None = None
    ttft_s: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    text: str = ""
    error: dict | None = None  # an error event that ended the stream


@dataclass
class WorkloadResult:
    turns: list[Turn] = field(default_factory=list)

    def ok(self) -> list[Turn]:
        return [t for t in self.turns if t.status == 200 and t.error is None]

    def hit_rate(self, first_turn: int = 0) -> float:
        ts = [t for t in self.ok() if t.index >= first_turn]
        prompt = sum(t.prompt_tokens for t in ts)
        return sum(t.cached_tokens for t in ts) / prompt if prompt else 0.0

    def ttft_p50(self, first_turn: int = 0) -> float:
        ts = [t.ttft_s for t in self.ok() if t.index >= first_turn and t.ttft_s is not None]
        return statistics.median(ts) if ts else float("nan")

    def replica_switches(self) -> int:
        """Turns served by another replica than the conversation's previous turn."""
        last: dict[int, str | None] = {}
        switches = 0
        for t in sorted(self.ok(), key=lambda t: (t.conversation, t.index)):
            if t.conversation in last and last[t.conversation] != t.replica:
                switches += 1
            last[t.conversation] = t.replica
        return switches


def _events(response: http.client.HTTPResponse) -> Iterator[str]:
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data: "):
            yield line[len("data: ") :]


def chat_turn(
    base_url: str,
    body: dict,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Turn:
    """One streamed chat completion: its status, replica, TTFT, usage, text and error."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    start = time.perf_counter()
    turn = Turn(conversation=-1, index=-1, status=0)
    try:
        payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(payload),
            {"content-type": "application/json", **(headers or {})},
        )
        response = conn.getresponse()
        turn.status = response.status
        turn.replica = response.getheader("x-blendrt-replica")
        if response.status != 200:
            turn.error = json.loads(response.read() or b"{}").get("error")
            return turn
        for data in _events(response):
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                turn.error = event["error"]
                continue
            for choice in event.get("choices", []):
                delta = choice.get("delta", {}).get("content")
                if delta and turn.ttft_s is None:
                    turn.ttft_s = time.perf_counter() - start
                turn.text += delta or ""
            if usage := event.get("usage"):
                turn.prompt_tokens = usage["prompt_tokens"]
                turn.cached_tokens = usage["prompt_tokens_details"]["cached_tokens"]
        return turn
    finally:
        conn.close()


def persona(index: int, words: int) -> str:
    """A system message of about `words` words, its own for each conversation."""
    pool = " ".join(USER_LINES).replace("?", "").replace(".", "").split()
    extra = " ".join(pool[(index * 7 + k * 3) % len(pool)] for k in range(words))
    return f"A friendly chat, number {index}. {extra}".strip()


def conversation(
    base_url: str,
    index: int,
    turns: int,
    max_tokens: int,
    header_key: bool = False,
    system_words: int = 0,
    think_s: float = 0.0,
) -> list[Turn]:
    """One conversation of `turns` turns, the whole history resent each turn, a pause of
    0 to 2 * think_s seconds (seeded by the conversation) before each turn after the first."""
    rng = random.Random(index)
    messages = [{"role": "system", "content": persona(index, system_words)}]
    out = []
    for t in range(turns):
        if t and think_s:
            time.sleep(rng.uniform(0, 2 * think_s))
        messages.append({"role": "user", "content": USER_LINES[(index + t) % len(USER_LINES)]})
        body = {"model": "blend", "messages": messages, "max_tokens": max_tokens, "seed": t}
        headers = {"x-conversation-id": f"c{index}"} if header_key else None
        turn = chat_turn(base_url, body, headers)
        turn.conversation, turn.index = index, t
        out.append(turn)
        if turn.status != 200 or turn.error is not None:
            break
        messages.append({"role": "assistant", "content": turn.text})
    return out


def run_workload(
    base_url: str,
    conversations: int = 16,
    turns: int = 5,
    concurrency: int = 8,
    max_tokens: int = 8,
    header_key: bool = False,
    system_words: int = 0,
    think_s: float = 0.0,
) -> WorkloadResult:
    """`conversations` conversations, `concurrency` at a time, each turn after the last
    (and a think time: see `conversation`). NOTE: with no think time a closed loop is
    unrealistically sticky under any router: a turn's replica has just freed the slot its
    next turn finds shortest."""
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [
            pool.submit(conversation, base_url, i, turns, max_tokens, header_key, system_words)
            for i in range(conversations)
        ]
        return WorkloadResult([t for f in futures for t in f.result()])
