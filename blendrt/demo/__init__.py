"""The bundled demo blend: three tiny chat models that `blendrt chat` runs with nothing
downloaded. Two GPT-J members (pygmalion format) and one Llama member (vicuna format), trained
from scratch on the chatterbot-corpus English dialogues by `python -m blendrt.demo.train`.

Kept free of heavy imports: `demo_members()` only reads ``members/blend.json``;
`demo_blend_members()` imports `blendrt.blend` when called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blendrt.blend import Member

DEMO_DIR: Path = Path(__file__).resolve().parent
MEMBERS_DIR: Path = DEMO_DIR / "members"
DEMO_REWARD_DIR: Path = DEMO_DIR / "reward"


def demo_members() -> list[dict[str, Any]]:
    """The demo members as dicts: name, path (absolute folder), chat_format, chat_options."""
    entries = json.loads((MEMBERS_DIR / "blend.json").read_text(encoding="utf-8"))
    return [
        {
            "name": e["name"],
            "path": str((MEMBERS_DIR / e["folder"]).resolve()),
            "chat_format": e.get("chat_format"),
            "chat_options": dict(e.get("chat_options") or {}),
        }
        for e in entries
    ]


def demo_blend_members() -> list[Member]:
    """The demo members as `blendrt.Member`s, ready for `blendrt.Blend`."""
    from blendrt.blend import Member

    return [
        Member(m["name"], m["path"], chat_format=m["chat_format"], chat_options=m["chat_options"])
        for m in demo_members()
    ]


__all__ = ["DEMO_DIR", "MEMBERS_DIR", "demo_blend_members", "demo_members"]
