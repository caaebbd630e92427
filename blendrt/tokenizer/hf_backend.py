"""A tokenizer.json run in `tokenizers`, adjusted as transformers adjusts it for the class.

A declared ``LlamaTokenizer`` gets a Metaspace pre-tokenizer, ``GPT2Tokenizer`` a plain ByteLevel
one; config added tokens join the vocabulary. A second pipeline that never prepends "▁" or a
space encodes text that continues other text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, pre_tokenizers

from blendrt.tokenizer.settings import _BYTE_PIECE, _DEFAULTS, _Settings, _unk_bos_eos


def _never_prepend(node: Any) -> Any:
    """A tokenizer.json subtree that puts no "▁" or space in front of the text."""
    if isinstance(node, list):
        return [
            _never_prepend(n)
            for n in node
            if not (isinstance(n, dict) and n.get("type") == "Prepend")
        ]
    if not isinstance(node, dict):
        return node
    node = {k: _never_prepend(v) for k, v in node.items()}
    if node.get("type") == "Metaspace":
        node["prepend_scheme"] = "never"
    if node.get("type") in ("Metaspace", "ByteLevel") and "add_prefix_space" in node:
        node["add_prefix_space"] = False
    return node


LONG_TEXT_CHARS = 1 << 16  # texts longer than this are encoded without holding the GIL


class _HFBackend:
    """A tokenizer.json pipeline, set up the way transformers sets it up for the class."""

    def __init__(self, file: Path, s: _Settings) -> None:
        text = file.read_text(encoding="utf-8")
        try:
            tok = HFTokenizer.from_str(text)
        except Exception as e:
            raise ValueError(f"{file} is not a valid tokenizer.json: {e}") from e
        if s.cls == "LlamaTokenizer" and '"ByteLevel"' not in text:
            prefix = s.cfg.get("add_prefix_space", True) is not False
            scheme = ("always" if s.cfg.get("legacy", False) else "first") if prefix else "never"
            tok.normalizer = None
            tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme=scheme, split=False)
            steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
            tok.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] * prefix)
        elif s.cls == "GPT2Tokenizer":
            tok.normalizer = None
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(bool(s.cfg.get("add_prefix_space", False)))
            tok.decoder = decoders.ByteLevel()
        self.named = {**_unk_bos_eos(_DEFAULTS.get(s.cls, ())), **s.named}
        present = {t.content for t in tok.get_added_tokens_decoder().values()}
        for t in s.added_tokens(_unk_bos_eos(_DEFAULTS.get(s.cls, ()))):
            if t.content not in present:
                (tok.add_special_tokens if t.special else tok.add_tokens)([t])
        tok.encode_special_tokens = bool(s.cfg.get("split_special_tokens", False))
        # (With a tokenizer.json, transformers ignores the config's add_bos/eos_token.)
        spec = json.loads(tok.to_str())
        self.tok, self.cont = tok, HFTokenizer.from_str(json.dumps(_never_prepend(spec)))
        self.cleanup = spec["model"].get("type") != "BPE"  # transformers skips it for BPE
        self.special_ids = frozenset(
            i for i, t in tok.get_added_tokens_decoder().items() if t.special
        )
        vocab = tok.get_vocab(with_added_tokens=True)
        fallback = '"ByteFallback"' in json.dumps(spec.get("decoder"))
        self.byte_ids = frozenset(
            i for p, i in vocab.items() if fallback and _BYTE_PIECE.fullmatch(p)
        )
        self.size = max(vocab.values(), default=-1) + 1

    def encode(self, text: str, specials: bool, cont: bool) -> list[int]:
        tok = self.cont if cont else self.tok
        if len(text) > LONG_TEXT_CHARS:
            # NOTE: encode_batch releases the GIL while it works (encode does not): a
            # server thread tokenizing a huge message must not stall the event loop.
            return tok.encode_batch([text], add_special_tokens=specials)[0].ids
        return tok.encode(text, add_special_tokens=specials).ids

    def decode(self, ids: Sequence[int], skip: bool) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tok.id_to_token(token_id)
