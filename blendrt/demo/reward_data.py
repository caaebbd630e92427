"""The demo reward model's inputs: their text format (`REWARD_FORMAT`, `reward_text`), the
tokenizer and token ids (left-truncated to `MAX_TOKENS`), the fixed held-out split, and the
(text, label, kind) examples that `blendrt.demo.train_reward` trains and evaluates on.

The signal is Chai's: a reply that makes the user retry it or end the conversation is bad.
The chatterbot-corpus dialogues give the good replies (the real next reply of a conversation
prefix); the bad ones are built from them, one per good reply, on the same prefix:

* ``off_topic``: a real reply taken from another dialogue, so fluent but beside the point;
* ``short``: an empty or noncommittal reply ("", "ok", "idk", "..."), never a corpus reply;
* ``echo``: the user's last message repeated back;
* ``mangled``: the real reply with its words shuffled, its letters scrambled, a word looped,
  or random letters.

Input format: the conversation as text, one line per message, ``User: {text}\\n`` or
``Bot: {text}\\n`` (whitespace inside a message collapsed to single spaces), the candidate
reply as the last ``Bot:`` line; tokenized with no special tokens and truncated from the LEFT
to `MAX_TOKENS` (256) tokens; the score is the model's output at the last token, label 1's
probability softmax(logits)[1].
"""

from __future__ import annotations

import json
import random
import shutil
import string
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from blendrt.demo import MEMBERS_DIR
from blendrt.demo.data import Conversation

#: One line per message; the candidate reply is the last "Bot:" line.
USER_LINE = "User: {text}\n"
BOT_LINE = "Bot: {text}\n"
REWARD_FORMAT = {"user": USER_LINE, "assistant": BOT_LINE}
#: Inputs are truncated from the left (the oldest messages go first) to this many tokens.
MAX_TOKENS = 256
#: Kinds of bad replies, in the order the model card reports them.
NEGATIVE_KINDS = ("off_topic", "short", "echo", "mangled")
#: Noncommittal replies that end a conversation (none of them is a corpus reply).
FILLERS = ("", ".", "?", "...", "ok", "k", "hm", "lol", "idk", "what", "sure", "Ok.", "mhm")
#: Held-out dialogues: those whose first user message hashes to 0 mod this.
HELD_OUT_MOD = 10
#: A share HISTORY_P of the inputs follow 1..MAX_HISTORY other dialogues (a long, mixed
#: history as in a blend); the others are one dialogue alone (short: fast to train on).
HISTORY_P, MAX_HISTORY = 0.3, 3
#: The vocabulary of a tokenizer trained for the reward model (train_tokenizer).
VOCAB = 1024


def reward_text(messages: Sequence[dict[str, Any]]) -> str:
    """The scorer's input text of a conversation whose last message is the candidate reply:
    ``User: ...\\n`` / ``Bot: ...\\n`` lines of the user and assistant messages (others are
    left out), each message's whitespace collapsed. Truncating it to `MAX_TOKENS` from the
    left is the tokenizer's job (its truncation_side is "left")."""
    lines = []
    for m in messages:
        line = REWARD_FORMAT.get(m.get("role", ""))
        if line is not None:
            lines.append(line.format(text=" ".join(str(m.get("content") or "").split())))
    return "".join(lines)


def is_held_out(conv: Conversation) -> bool:
    """The fixed held-out split (independent of --seed): by the first user message, so that
    no held-out question was seen in training with another answer."""
    return zlib.crc32(conv[0].lower().encode("utf-8")) % HELD_OUT_MOD == 0


def mangle(rng: random.Random, reply: str) -> str:
    words = reply.split()
    how = rng.randrange(4)
    if how == 0 and len(set(words)) >= 2:  # words shuffled
        out = words[:]
        while out == words:
            rng.shuffle(out)
        return " ".join(out)
    if how == 1 and words:  # letters scrambled inside each word
        return " ".join("".join(rng.sample(w, len(w))) for w in words)
    if how == 2 and words:  # a word looped, as a degenerate sampler does
        return " ".join([rng.choice(words)] * rng.randint(4, 12))
    n = rng.randint(3, 10)  # random letters
    return " ".join(
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 8))) for _ in range(n)
    )


def negative(
    rng: random.Random, kind: str, prefix: Conversation, reply: str, others: Sequence[str]
) -> str:
    if kind == "off_topic":
        while True:
            other = rng.choice(others)
            if other.lower() != reply.lower():
                return other
    if kind == "short":
        return rng.choice(FILLERS)
    if kind == "echo":
        return prefix[-1]
    return mangle(rng, reply)


def examples(
    rng: random.Random,
    convs: Sequence[Conversation],
    contexts: Sequence[Conversation],
    every_kind: bool = False,
) -> list[tuple[str, int, str]]:
    """(text, label, kind) pairs: for every bot turn of every dialogue, the real reply (label
    1, kind "real") and one bad reply (label 0, the kinds of NEGATIVE_KINDS in turn), on the
    same prefix; a share HISTORY_P of the prefixes follow 1..MAX_HISTORY random dialogues of
    `contexts`. every_kind: one pair per kind of bad reply (for evaluation)."""
    replies = sorted({t for c in convs for t in c[1::2]})
    out = []
    n = rng.randrange(len(NEGATIVE_KINDS))
    for conv in convs:
        for i in range(1, len(conv), 2):
            history: Conversation = []
            k = rng.randint(1, MAX_HISTORY) if rng.random() < HISTORY_P else 0
            for _ in range(k):
                c = rng.choice(contexts)
                history += c[: len(c) // 2 * 2]
            prefix = history + conv[:i]
            kinds = NEGATIVE_KINDS if every_kind else [NEGATIVE_KINDS[n % len(NEGATIVE_KINDS)]]
            n += 1
            for kind in kinds:
                bad = negative(rng, kind, conv[:i], conv[i], replies)
                for reply, label, k in ((conv[i], 1, "real"), (bad, 0, kind)):
                    turns = [*prefix, reply]
                    msgs = [
                        {"role": ("user", "assistant")[j % 2], "content": t}
                        for j, t in enumerate(turns)
                    ]
                    out.append((reward_text(msgs), label, k))
    return out


def train_tokenizer(folder: Path, convs: Sequence[Conversation]) -> Any:
    """A GPT-2 style byte-level BPE tokenizer trained on the corpus in the reward format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [
        reward_text([{"role": r, "content": t}])
        for c in convs
        for r, t in zip(("user", "assistant") * len(c), c, strict=False)
    ]
    tok.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|padding|>",
        model_max_length=MAX_TOKENS,
        truncation_side="left",
    )
    fast.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 4 and 5 know this name
    config["truncation_side"] = "left"
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return fast


def copy_tokenizer(folder: Path, member: str) -> Any:
    """A demo member's byte-level BPE tokenizer, with left truncation to MAX_TOKENS."""
    from transformers import PreTrainedTokenizerFast

    src = MEMBERS_DIR / member
    shutil.copy(src / "tokenizer.json", folder / "tokenizer.json")
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.update(model_max_length=MAX_TOKENS, truncation_side="left")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return PreTrainedTokenizerFast.from_pretrained(folder)


def encode(tok: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids, left-truncated to MAX_TOKENS (the tokenizer's truncation side), no special
    tokens."""
    enc = tok(list(texts), add_special_tokens=False, truncation=True, max_length=MAX_TOKENS)
    return enc["input_ids"]


def pad(batch: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids and attention_mask."""
    width = max(len(ids) for ids in batch)
    ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids in batch])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch])
    return {"input_ids": ids, "attention_mask": mask}
