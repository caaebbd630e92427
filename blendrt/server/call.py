"""One OpenAI completion request in flight: its prepared turns (one per prompt), how its
answer is laid out, and closing its streams."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from blendrt.blend_stream import BlendStream
from blendrt.engine.request import TokenLogprob
from blendrt.server.protocol import ChatCompletionRequest, CompletionRequest
from blendrt.server.state import ServerState
from blendrt.turn import PreparedTurn


@dataclass
class Call:
    """The request's body, its turns, and what its choices are numbered by."""

    body: ChatCompletionRequest | CompletionRequest
    turns: list[PreparedTurn]
    chat: bool
    echo: list[str] | None = None  # prompt texts, for completions with echo
    echo_logprobs: list[list[TokenLogprob | None]] | None = None
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def choice_index(self, turn: int, candidate: int) -> int:
        return turn * self.body.n + candidate


async def close_streams(state: ServerState, streams: list[BlendStream]) -> None:
    """Closes the request's streams (aborting what still runs) and releases its slot."""
    for s in streams:
        await s.aclose()
        state.streams.discard(s)
    state.release()
