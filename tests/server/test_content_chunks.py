"""ContentChunks renders a stream's plain content chunk exactly as the response model would:
same event text, for chat and completions, any choice index, any text (quotes, escapes,
control characters, non-ASCII, the placeholder's own letters)."""

from __future__ import annotations

import json

import pytest

from blendrt.server.call import Call
from blendrt.server.protocol import ChatCompletionRequest, CompletionRequest
from blendrt.server.responses import ContentChunks, sse
from blendrt.server.schemas import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    CompletionChoice,
    CompletionResponse,
)

TEXTS = ["hello", " world", 'say "hi"', "back\\slash", "line\nbreak\ttab\r", "\x00\x01\x1f\x7f",
         "é 日本 🙂", "\u2028\u2029", "BLENDRT_DELTA_2f9c41", "</s>", ""]  # fmt: skip


def _call(chat: bool) -> Call:
    if chat:
        body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}])
    else:
        body = CompletionRequest(model="m", prompt="x")
    return Call(body=body, turns=[], chat=chat)


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("index", [0, 3])
def test_same_event_as_the_model(chat: bool, index: int) -> None:
    call = _call(chat)
    chunks = ContentChunks(call, "m")
    for text in TEXTS:
        if chat:
            choice = ChatChunkChoice(index=index, delta=ChatDelta(content=text))
            body = ChatCompletionChunk(
                id=call.id, created=call.created, model="m", choices=[choice]
            )
        else:
            choice = CompletionChoice(index=index, text=text)
            body = CompletionResponse(id=call.id, created=call.created, model="m", choices=[choice])
        expected = sse(body)
        got = chunks.event(index, text)
        # The same JSON value, and byte for byte the same event.
        assert json.loads(got[6:]) == json.loads(expected[6:])
        assert got == expected
