"""Building OpenAI response bodies from blendrt replies: usage, choices, chunks, and
log-probabilities in the chat and the completions layouts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from blendrt.engine.request import TokenLogprob
from blendrt.server.call import Call
from blendrt.server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    PromptTokensDetails,
    TokenLogprobInfo,
    TopLogprob,
    UsageInfo,
)
from blendrt.server.state import ServerState
from blendrt.tokenizer.tokenizer import Tokenizer
from blendrt.turn import Reply


def usage(replies: Sequence[Reply]) -> UsageInfo:
    prompt = sum(r.usage.prompt_tokens for r in replies)
    completion = sum(r.usage.completion_tokens for r in replies)
    return UsageInfo(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=sum(r.usage.cached_prompt_tokens for r in replies)
        ),
        truncated_messages=sum(r.usage.truncated_messages for r in replies),
        truncated_tokens=sum(r.usage.truncated_tokens for r in replies),
    )


def finish_reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "abort") else "stop"


class TokenText:
    """Token ids as the strings and bytes OpenAI's logprobs show (each token decoded
    alone), memoized per tokenizer."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text


def chat_logprobs(text: TokenText, logprobs: Sequence[TokenLogprob]) -> ChatLogprobs:
    def top(token_id: int, logprob: float) -> TopLogprob:
        s = text(token_id)
        return TopLogprob(token=s, logprob=logprob, bytes=list(s.encode()))

    return ChatLogprobs(
        content=[
            TokenLogprobInfo(
                **top(lp.token_id, lp.logprob).model_dump(),
                top_logprobs=[top(t, v) for t, v in lp.top],
            )
            for lp in logprobs
        ]
    )


def completion_logprobs(
    text: TokenText,
    logprobs: Sequence[TokenLogprob | None],
    token_ids: Sequence[int],
    offset: int = 0,
) -> CompletionLogprobs:
    """`logprobs[i]` of `token_ids[i]` (None: no logprob, an echoed prompt's first token);
    text offsets count from `offset`."""
    tokens, values, tops, offsets = [], [], [], []
    for token_id, lp in zip(token_ids, logprobs, strict=True):
        s = text(token_id)
        tokens.append(s)
        offsets.append(offset)
        offset += len(s)
        values.append(None if lp is None else lp.logprob)
        tops.append(None if lp is None else {text(t): v for t, v in lp.top})
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets
    )


def sse(body: BaseModel | dict[str, Any]) -> str:
    """One server-sent event holding a response model (or an error object) as JSON."""
    data = body.model_dump_json() if isinstance(body, BaseModel) else json.dumps(body)
    return f"data: {data}\n\n"


def chat_body(state: ServerState, call: Call, replies: list[Reply]) -> ChatCompletionResponse:
    text = TokenText(state.blend.tokenizer(replies[0].member))
    choices = [
        ChatChoice(
            index=call.choice_index(t, j),
            message=AssistantMessage(content=c.text),
            finish_reason=finish_reason(c.finish_reason),
            reward_score=c.score,
            logprobs=chat_logprobs(text, c.logprobs)
            if call.body.num_top_logprobs() is not None
            else None,
        )
        for t, reply in enumerate(replies)
        for j, c in enumerate(reply.candidates)
    ]
    return ChatCompletionResponse(
        id=call.id,
        created=call.created,
        model=replies[0].member,
        choices=choices,
        usage=usage(replies),
    )


def completion_body(state: ServerState, call: Call, replies: list[Reply]) -> CompletionResponse:
    text = TokenText(state.blend.tokenizer(replies[0].member))
    choices = []
    for t, reply in enumerate(replies):
        prefix = call.echo[t] if call.echo else ""
        for j, c in enumerate(reply.candidates):
            logprobs = None
            if call.body.num_top_logprobs() is not None:
                ids, lps = [], []
                if call.echo_logprobs is not None:
                    ids, lps = list(call.turns[t].prompt_ids), list(call.echo_logprobs[t])
                ids += [lp.token_id for lp in c.logprobs]
                lps += list(c.logprobs)
                logprobs = completion_logprobs(text, lps, ids)
            choices.append(
                CompletionChoice(
                    index=call.choice_index(t, j),
                    text=prefix + c.text,
                    finish_reason=finish_reason(c.finish_reason),
                    logprobs=logprobs,
                )
            )
    return CompletionResponse(
        id=call.id,
        created=call.created,
        model=replies[0].member,
        choices=choices,
        usage=usage(replies),
    )


class ContentChunks:
    """The server-sent event of a stream's plain content chunk (a delta of text; no role, no
    finish reason, no log-probabilities), the bulk of every stream.

    The response model is rendered once per choice index with a placeholder for the text,
    and each chunk fills in the text's JSON string: the same event the model renders, for a
    fraction of the cost of building and dumping three pydantic models per token."""

    _MARK = "BLENDRT_DELTA_2f9c41"  # ASCII without escapes: found verbatim in the JSON

    def __init__(self, call: Call, model: str) -> None:
        self._call, self._model = call, model
        self._halves: dict[int, tuple[str, str]] = {}  # {choice index: (before, after)}

    def event(self, index: int, delta: str) -> str:
        halves = self._halves.get(index)
        if halves is None:
            halves = self._halves[index] = self._split(index)
        return halves[0] + json.dumps(delta, ensure_ascii=False) + halves[1]

    def _split(self, index: int) -> tuple[str, str]:
        c = self._call
        if c.chat:
            choice = ChatChunkChoice(index=index, delta=ChatDelta(content=self._MARK))
            body: BaseModel = ChatCompletionChunk(
                id=c.id, created=c.created, model=self._model, choices=[choice]
            )
        else:
            choice = CompletionChoice(index=index, text=self._MARK)
            body = CompletionResponse(
                id=c.id, created=c.created, model=self._model, choices=[choice]
            )
        before, after = sse(body).split(f'"{self._MARK}"')
        return before, after
