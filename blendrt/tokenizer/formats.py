"""The chat-format registry: a built-in format by name, or a folder's jinja template."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from blendrt.tokenizer.builtin_formats import ChatML, Llama2Chat, Pygmalion, Vicuna
from blendrt.tokenizer.chat_format import ChatFormat
from blendrt.tokenizer.chat_template import TemplateChatFormat
from blendrt.tokenizer.tokenizer import Tokenizer

#: {name: format class} of the built-in formats.
CHAT_FORMATS: Mapping[str, Callable[..., ChatFormat]] = MappingProxyType(
    {f.name: f for f in (Pygmalion, Vicuna, Llama2Chat, ChatML)}
)


def get_chat_format(tokenizer: Tokenizer, name: str | None = None, **options: Any) -> ChatFormat:
    """The built-in format ``name``; with no name, the folder's jinja chat_template (option
    ``template`` overrides it; ``template_kwargs`` are passed to it). Options go to the
    factory, e.g. ``member``, ``bot_name`` (pygmalion), ``system`` (vicuna)."""
    names = ", ".join(CHAT_FORMATS)
    if name is not None:
        if name not in CHAT_FORMATS:
            raise ValueError(f"unknown chat format {name!r}; built-in formats: {names}")
        return CHAT_FORMATS[name](tokenizer, **options)
    template = options.pop("template", None) or tokenizer.chat_template
    if not template:
        raise ValueError(
            f"tokenizer {tokenizer.path!r} has no chat_template; choose a built-in chat format: "
            f"{names}"
        )
    return TemplateChatFormat(tokenizer, template, **options)
