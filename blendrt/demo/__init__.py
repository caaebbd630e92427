"""The bundled demo blend: three tiny chat models that `blendrt chat` runs with nothing
downloaded. Two GPT-J members (pygmalion format) and one Llama member (vicuna format), trained
from scratch on the chatterbot-corpus English dialogues by `python -m blendrt.demo.train`.

Kept free of heavy imports: `demo_members()` only reads ``members/blend.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEMO_DIR: Path = Path(__file__).resolve().parent
MEMBERS_DIR: Path = DEMO_DIR / "members"


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


__all__ = ["DEMO_DIR", "MEMBERS_DIR", "demo_members"]
