"""OpenAI-compatible request bodies, validated strictly with pydantic, and the errors they
produce. The models are the server's OpenAPI schema (see /openapi.json).

Fields are honoured or refused, never ignored: an unknown field, or one blendrt does not
implement (tools, response formats other than text, ...), is a 400 naming it. Numeric fields
have the ranges of `blendrt.sampling.RANGES`; a sampling field left out (or null) takes the
chosen member's generation_config.json default, then blendrt's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from blendrt.sampling import MAX_LOGIT_BIAS, MAX_STOP_TOKEN_IDS, MAX_STOPS, MAX_TOKEN_ID, RANGES

MAX_MESSAGES = 4096  # per request
MAX_PROMPTS = 64  # prompts in one /v1/completions request


def _integral(value: Any) -> Any:
    """JSON has one number type: 3.0 is the integer 3 (as JSON Schema's "integer" says);
    3.5, true and "3" are not integers."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _a_bool(value: Any) -> Any:
    if type(value) is not bool:  # Literal[False] alone would take 0 (0 == False)
        raise ValueError("must be false")
    return value


#: An int in JSON's sense (3 or 3.0), never a bool or a string.
Int = Annotated[int, BeforeValidator(_integral)]
TokenId = Annotated[Int, Field(ge=0, le=MAX_TOKEN_ID)]
NonEmpty = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    # NOTE: strict: a bool is not an int, "1" is not a number; forbid: unknown fields are
    # refused by name rather than silently dropped.
    model_config = ConfigDict(strict=True, extra="forbid")


def _range(name: str, *, exclusive_low: bool = False) -> Any:
    low, high = RANGES[name]
    bound = {"gt": 0} if exclusive_low else {"ge": low}
    if isinstance(low, float):
        bound["allow_inf_nan"] = False
    return Field(default=None, le=high, **bound)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]  # developer: OpenAI's system
    content: str | list[TextPart]
    member: str | None = None  # blendrt: the member that wrote an assistant turn

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: Literal["text"] = Field(description="only text: blendrt has no JSON or schema mode")


class _Request(_Strict):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str = Field(description="the blend's id (the policy picks the member) or a member")
    max_tokens: Int | None = _range("max_tokens")
    temperature: float | None = _range("temperature")
    top_p: float | None = _range("top_p", exclusive_low=True)
    n: Int = Field(default=1, ge=1, le=RANGES["n"][1])
    best_of: Int | None = _range("best_of")
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=MAX_STOPS)] | None = None
    seed: Int | None = _range("seed")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = _range("presence_penalty")
    frequency_penalty: float | None = _range("frequency_penalty")
    logit_bias: (
        Annotated[
            dict[
                Annotated[str, Field(pattern=r"^[0-9]{1,10}$")],
                Annotated[float, Field(ge=RANGES["logit_bias"][0], le=RANGES["logit_bias"][1])],
            ],
            Field(max_length=MAX_LOGIT_BIAS, description="{token id: bias}"),
        ]
        | None
    ) = None
    user: str | None = Field(
        default=None, max_length=256, description="the end user; recorded, changes no reply"
    )
    # vLLM's extra sampling fields
    top_k: Int | None = Field(default=None, ge=-1, le=RANGES["top_k"][1], description="-1, 0: off")
    min_p: float | None = _range("min_p")
    repetition_penalty: float | None = _range("repetition_penalty")
    min_tokens: Int | None = _range("min_tokens")
    ignore_eos: bool | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def num_top_logprobs(self) -> int | None:
        return None

    def sampling_fields(self) -> dict[str, Any]:
        """{SamplingParams field: value} for the fields the request sets; the member's
        generation_config.json defaults (then SamplingParams') fill the rest."""
        names = (
            "temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
            "frequency_penalty", "seed", "ignore_eos", "min_tokens", "n", "best_of",
        )  # fmt: skip
        given = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.top_k is not None:
            given["top_k"] = max(self.top_k, 0)  # vLLM's -1 is off, as 0
        if self.requested_max_tokens() is not None:
            given["max_tokens"] = self.requested_max_tokens()
        if self.stop is not None:
            given["stop"] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if self.stop_token_ids is not None:
            given["stop_token_ids"] = tuple(self.stop_token_ids)
        if self.logit_bias:
            given["logit_bias"] = {int(k): v for k, v in self.logit_bias.items()}
        if self.num_top_logprobs() is not None:
            given["logprobs"] = self.num_top_logprobs()
        return given


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Int | None = _range("max_tokens")
    logprobs: bool = False
    top_logprobs: Int | None = _range("logprobs")
    # As in OpenAI's Responses API: "auto" drops the oldest messages to fit the member's
    # window; "disabled" answers 400 context_length_exceeded instead.
    truncation: Literal["auto", "disabled"] = "auto"
    tools: list[dict[str, Any]] | None = Field(default=None, description="refused if non-empty")
    tool_choice: Literal["none"] | None = None
    response_format: ResponseFormat | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if tools:
            raise ValueError("tools are not supported: blendrt members do not call tools")
        return tools

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def num_top_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def blend_messages(self) -> list[dict[str, Any]]:
        return blend_messages(self.messages)


def blend_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Request messages as Blend takes them (developer is OpenAI's newer name for system)."""
    out = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        message: dict[str, Any] = {"role": role, "content": m.text()}
        if m.role == "assistant" and m.member:
            message["member"] = m.member
        out.append(message)
    return out


Prompt = (
    NonEmpty
    | Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_PROMPTS)]
    | Annotated[list[TokenId], Field(min_length=1)]
    | Annotated[
        list[Annotated[list[TokenId], Field(min_length=1)]],
        Field(min_length=1, max_length=MAX_PROMPTS),
    ]
)


class CompletionRequest(_Request):
    prompt: Prompt = Field(description="text, texts, token ids, or lists of token ids")
    echo: bool = False
    logprobs: Int | None = _range("logprobs")
    suffix: None = Field(default=None, description="not supported (refused if given)")

    def num_top_logprobs(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class TokenizeCompletionRequest(_Strict):
    model: str
    prompt: str
    add_special_tokens: bool = True


class TokenizeChatRequest(_Strict):
    model: str
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    add_generation_prompt: bool = True
    add_special_tokens: Annotated[Literal[False], BeforeValidator(_a_bool)] = Field(
        default=False, description="the member's chat format places its special tokens"
    )


class DetokenizeRequest(_Strict):
    model: str
    tokens: list[TokenId]
