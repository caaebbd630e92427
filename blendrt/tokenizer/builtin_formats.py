"""The built-in chat formats: pygmalion, vicuna, llama-2-chat, chatml.

Each renders a conversation append-only in token space as `ChatFormat` describes; a folder's
jinja chat template is `chat_template.TemplateChatFormat` instead; `formats` picks by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from blendrt.tokenizer.chat_format import ChatFormat, Lead, Message, Part

if TYPE_CHECKING:
    from blendrt.tokenizer.tokenizer import Tokenizer


def _spaced(text: str) -> str:
    return " " + text if text else ""


class Pygmalion(ChatFormat):
    """``{bot}'s Persona: {system}\\n<START>\\n`` (just ``<START>\\n`` without a system
    message), then ``You: {user}\\n`` and ``{bot}: {reply}\\n`` lines; opening ``{bot}:``."""

    name = "pygmalion"

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        member: str | None = None,
        bot_name: str = "Bot",
        user_name: str = "You",
    ) -> None:
        super().__init__(tokenizer, member=member)
        self.bot_name, self.user_name = bot_name, user_name
        self.stop_strings = [f"\n{user_name}:"]

    def _line(self, history: Sequence[Message], text: str) -> list[Part]:
        return [text] if history else self._start("<START>\n" + text)

    def _parts(self, messages: Sequence[Message], i: int, ctx: Any):
        m = messages[i]
        if m["role"] == "system":
            return self._start(f"{self.bot_name}'s Persona: {m['content']}\n<START>\n"), None, []
        if m["role"] == "user":
            return self._line(messages[:i], f"{self.user_name}: {m['content']}\n"), None, []
        return self._opening(messages[:i], ctx), _spaced(m["content"]), ["\n"]

    def _opening(self, history: Sequence[Message], ctx: Any) -> list[Part]:
        return self._line(history, f"{self.bot_name}:")


class Vicuna(ChatFormat):
    """FastChat's vicuna_v1.1: ``{system} USER: {u} ASSISTANT: {a}</s>USER: {u2} ASSISTANT:``
    with </s> the EOS id; the default system prompt when there is no system message."""

    name = "vicuna"
    DEFAULT_SYSTEM = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )

    def __init__(
        self, tokenizer: Tokenizer, *, member: str | None = None, system: str | None = None
    ) -> None:
        super().__init__(tokenizer, member=member)
        if tokenizer.eos_token_id is None:
            raise ValueError("the vicuna chat format needs a tokenizer with an EOS token")
        self.system = self.DEFAULT_SYSTEM if system is None else system
        self.stop_strings = ["USER:"]

    def _turn(self, history: Sequence[Message], text: str) -> list[Part]:
        if not history:
            return [*self._start(self.system), " " + text]
        if history[-1]["role"] == "assistant":  # after </s>: no separator
            return [Lead(text, after=self.tokenizer.eos_token or "")]
        return [" " + text]

    def _parts(self, messages: Sequence[Message], i: int, ctx: Any):
        m = messages[i]
        if m["role"] == "system":
            return self._start(m["content"]), None, []
        if m["role"] == "user":
            return self._turn(messages[:i], "USER:" + _spaced(m["content"])), None, []
        eos = (self.tokenizer.eos_token_id,)
        return self._opening(messages[:i], ctx), _spaced(m["content"]), [eos]

    def _opening(self, history: Sequence[Message], ctx: Any) -> list[Part]:
        return self._turn(history, "ASSISTANT:")


class Llama2Chat(ChatFormat):
    """Meta's Llama-2-chat: ``<s>[INST] <<SYS>>\\n{sys}\\n<</SYS>>\\n\\n{u} [/INST] {a} </s>``
    then ``<s>[INST] {u2} [/INST]``; BOS/EOS are ids, user and reply text is stripped, and each
    ``[INST]`` after BOS is tokenized as a fresh text (as Meta encodes every turn)."""

    name = "llama-2-chat"

    def __init__(self, tokenizer: Tokenizer, *, member: str | None = None) -> None:
        super().__init__(tokenizer, member=member)
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the llama-2-chat format needs a tokenizer with BOS and EOS tokens")
        self.stop_strings = ["[INST]"]

    def _inst(self, text: str) -> list[Part]:
        return self._start("[INST] " + text, bos=True)

    def _parts(self, messages: Sequence[Message], i: int, ctx: Any):
        m, history = messages[i], messages[:i]
        if m["role"] == "system":
            return self._inst(f"<<SYS>>\n{m['content']}\n<</SYS>>\n\n"), None, []
        text = m["content"].strip()
        if m["role"] == "user":
            if history and history[-1]["role"] == "system":
                return [f"{text} [/INST]"], None, []
            return self._inst(f"{text} [/INST]"), None, []
        return self._opening(history, ctx), _spaced(text), [" ", (self.tokenizer.eos_token_id,)]

    def _opening(self, history: Sequence[Message], ctx: Any) -> list[Part]:
        last = history[-1]["role"] if history else None
        if last == "user":
            return []
        return [" [/INST]"] if last == "system" else self._inst(" [/INST]")


class ChatML(ChatFormat):
    """``<|im_start|>{role}\\n{content}<|im_end|>\\n``; opening ``<|im_start|>assistant\\n``.
    Without <|im_start|> as a special token the markers are plain text."""

    name = "chatml"

    def __init__(self, tokenizer: Tokenizer, *, member: str | None = None) -> None:
        super().__init__(tokenizer, member=member)
        self.stop_strings = ["<|im_end|>", "<|im_start|>"]
        end = tokenizer.token_to_id("<|im_end|>")
        if end is not None:
            self.stop_token_ids.add(end)

    def _block(self, history: Sequence[Message], text: str) -> list[Part]:
        return [text] if history else self._start(text)

    def _parts(self, messages: Sequence[Message], i: int, ctx: Any):
        m = messages[i]
        if m["role"] != "assistant":
            text = f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
            return self._block(messages[:i], text), None, []
        return self._opening(messages[:i], ctx), m["content"], ["<|im_end|>\n"]

    def _opening(self, history: Sequence[Message], ctx: Any) -> list[Part]:
        return self._block(history, "<|im_start|>assistant\n")


#: Built-in formats by name: name -> factory(tokenizer, *, member=None, **options).
