"""The conversation key a request is routed by (no Ray here: the ingress computes it, the
request router reads it).

In order: the `x-conversation-id` header; else the OpenAI `user` field; else, for a chat
completion, a hash of the system message(s) and the first user message (the part of a
conversation that every later turn repeats unchanged); for a raw completion, a hash of the
prompt's first characters. A request with none (GET /health, /v1/models) has no key and is
routed by load alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

CONVERSATION_HEADER = "x-conversation-id"
MAX_KEY_CHARS = 256  # a longer header or user is cut (it still hashes the same every turn)
PROMPT_PREFIX_CHARS = 1024  # of a raw prompt: what a growing multi-turn prompt keeps

#: The POST paths whose bodies carry a conversation (others are keyed by header only).
KEYED_PATHS = ("/v1/chat/completions", "/v1/completions")


def _digest(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))  # NOTE: length-prefixed: no ambiguity
        h.update(data)
    return h.hexdigest()


def _text(content: Any) -> str:
    """A message's content as text (a string, or OpenAI's list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _from_messages(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    system: list[str] = []
    for m in messages:
        if not isinstance(m, dict):
            return None
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(_text(m.get("content")))
        elif role == "user":
            return "chat:" + _digest(*system, "\x00user", _text(m.get("content")))
    return "chat:" + _digest(*system) if system else None


def _from_prompt(prompt: Any) -> str | None:
    if isinstance(prompt, list) and len(prompt) == 1:  # one prompt in a list
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return "prompt:" + _digest(prompt[:PROMPT_PREFIX_CHARS])
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return "prompt:" + _digest(",".join(map(str, prompt[: PROMPT_PREFIX_CHARS // 4])))
    return None


def header_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The x-conversation-id header's value (ASGI headers: lower-case byte pairs)."""
    for name, value in headers:
        if name == CONVERSATION_HEADER.encode():
            text = value.decode("latin-1").strip()
            return "id:" + text[:MAX_KEY_CHARS] if text else None
    return None


def body_key(path: str, body: bytes | Mapping[str, Any]) -> str | None:
    """The key a chat or completion request's JSON body gives (None: none, or not JSON)."""
    if path not in KEYED_PATHS:
        return None
    if not isinstance(body, Mapping):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None  # the replica answers the 400
        if not isinstance(body, dict):
            return None
    user = body.get("user")
    if isinstance(user, str) and user.strip():
        return "user:" + user.strip()[:MAX_KEY_CHARS]
    if path == "/v1/chat/completions":
        return _from_messages(body.get("messages"))
    return _from_prompt(body.get("prompt"))


def conversation_key(
    path: str, headers: Iterable[tuple[bytes, bytes]], body: bytes | Mapping[str, Any]
) -> str | None:
    """The request's conversation key: header, else user, else the conversation's start."""
    return header_key(headers) or body_key(path, body)
