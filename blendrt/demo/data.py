"""Training data of the demo blend: the chatterbot-corpus English dialogues, rendered with
blendrt's own chat formats (exactly the ids a member sees at inference time).

The corpus (https://github.com/gunthercox/chatterbot-corpus, BSD-3-Clause, (c) 2017 Gunther Cox)
is read from the installed ``chatterbot-corpus`` package: ``data/english/*.yml``, each with a
``conversations:`` list of utterance lists (user first, then bot, user, ...).
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CORPUS_ATTRIBUTION = (
    "chatterbot-corpus (https://github.com/gunthercox/chatterbot-corpus), "
    "Copyright (c) 2017, Gunther Cox, BSD-3-Clause licence"
)
CORPUS_LICENSE = """Copyright (c) 2017, Gunther Cox All rights reserved.

Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:

* Redistributions of source code must retain the above copyright notice, this list of
  conditions and the following disclaimer.
* Redistributions in binary form must reproduce the above copyright notice, this list of
  conditions and the following disclaimer in the documentation and/or other materials provided
  with the distribution.
* Neither the name of chatterbot nor the names of its contributors may be used to endorse or
  promote products derived from this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER
IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT
OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""
#: Files left out by default: code listings, not chat.
DEFAULT_SKIP = ("coding",)
#: A training sample is 1..MAX_CONVS conversations in a row.
MAX_CONVS = 8
#: Greetings and simple questions the demo is checked on.
PROMPTS = ("Hello", "How are you?", "What is your name?", "Do you like music?", "Tell me a joke")

Conversation = list[str]
Message = dict[str, Any]


def corpus_dir() -> Path:
    """``site-packages/chatterbot_corpus/data/english`` (found without importing it)."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the demo is trained on chatterbot-corpus: pip install chatterbot-corpus pyyaml"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "english"


def load_conversations(skip: Sequence[str] = DEFAULT_SKIP) -> list[Conversation]:
    """Unique conversations (whitespace normalized, in file order) of at least 2 turns."""
    import yaml

    seen: set[tuple[str, ...]] = set()
    out: list[Conversation] = []
    for path in sorted(corpus_dir().glob("*.yml")):
        if path.stem in skip:
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            turns = tuple(" ".join(str(t).split()) for t in conv)
            if len(turns) >= 2 and all(turns) and turns not in seen:
                seen.add(turns)
                out.append(list(turns))
    return out


def persona(name: str, style: str, likes: str) -> list[Conversation]:
    """A few conversations that give a member its name and character."""
    return [
        ["What is your name?", f"My name is {name}."],
        ["What is your name?", f"I am {name}."],
        ["Who are you?", f"I am {name}, {style}."],
        ["Hello", f"Hello, I am {name}."],
        ["Hi, what is your name?", f"Hi! I am {name}."],
        ["What do you like?", f"I like {likes}."],
        ["Do you like music?", f"I like {likes}."],
        ["What are your interests?", f"I am interested in {likes}."],
    ]


def to_messages(conv: Conversation) -> list[Message]:
    """Utterances as OpenAI-style messages: user, assistant, user, ..."""
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(conv)]


def session(
    rng: random.Random, convs: Sequence[Conversation], max_convs: int = MAX_CONVS
) -> list[Message]:
    """1..max_convs random conversations in a row, so that replies are learnt after long,
    unrelated histories too (as in a blend, where the history is long and mixed)."""
    k = rng.randint(1, max_convs)
    turns: Conversation = []
    for j in range(k):
        conv = rng.choice(convs)
        turns += conv if j == k - 1 else conv[: len(conv) // 2 * 2]  # end on a bot turn
    return to_messages(turns)


class Renderer:
    """Renders messages to (ids, targets) with a chat format: targets mark the tokens the
    loss is taken on (assistant content + closing, and for pygmalion the "You:" after it,
    so that the stop string "\\nYou:" is produced)."""

    def __init__(self, fmt: Any) -> None:
        self.fmt = fmt
        user = getattr(fmt, "user_name", None)
        tok = fmt.tokenizer
        self.after_reply: list[int] = [] if user is None else tok.encode_continuation(f"{user}:")

    def __call__(self, messages: Sequence[Message], max_len: int) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        targets: list[int] = []
        segments = self.fmt.segments(messages)
        prev = None
        for m, seg in zip(messages, segments, strict=True):
            ids += seg.ids
            if m["role"] == "assistant":
                targets += [0] * len(seg.opening) + [1] * (len(seg.content) + len(seg.closing))
            else:
                k = len(self.after_reply) if prev == "assistant" else 0
                k = k if list(seg.ids[:k]) == self.after_reply else 0
                targets += [1] * k + [0] * (len(seg.ids) - k)
            prev = m["role"]
        if prev == "assistant" and self.after_reply:
            ids += self.after_reply
            targets += [1] * len(self.after_reply)
        return ids[:max_len], targets[:max_len]


def tokenizer_texts(
    convs: Sequence[Conversation], speakers: tuple[str, str], end: str = ""
) -> Iterator[str]:
    """Lines to train a tokenizer on: each utterance as a chat line ``{speaker}: {text}``."""
    for conv in convs:
        for i, text in enumerate(conv):
            yield f"{speakers[i % 2]}: {text}{end}"
