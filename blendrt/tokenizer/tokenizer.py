"""Tokenizers of blend members, from local Hugging Face folders, equal to `transformers` 5.

`encode`/`decode` give what ``AutoTokenizer.from_pretrained(folder)`` gives, without importing
transformers or running code from the folder. ``tokenizer.json`` runs in `tokenizers`, adjusted
as transformers adjusts it (a declared ``LlamaTokenizer`` gets a Metaspace pre-tokenizer,
``GPT2Tokenizer`` a plain ByteLevel one; config added tokens join the vocabulary).
``tokenizer.model`` runs in `sentencepiece` the way transformers' conversion of it does: text
is split at added tokens and each chunk encoded alone. ``LlamaTokenizer`` drops the model's
normalizer, ranks BPE merges by piece id and puts "▁" before a chunk not starting with a space
(the first chunk only unless ``legacy``); with no class, the model's normalizer is kept. Decoding
turns "▁" into spaces, joins each run of byte pieces (a run that is not UTF-8 gives one U+FFFD
per byte) and strips one leading space.

The folder's settings are read in `settings`, the backends live in `hf_backend` and `sp_backend`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from blendrt.tokenizer.hf_backend import _HFBackend
from blendrt.tokenizer.settings import _ints, _Settings
from blendrt.tokenizer.sp_backend import _SPBackend

_FILES = ("tokenizer.json", "tokenizer.model")


class Tokenizer:
    """One member's tokenizer; build it with `load_tokenizer`."""

    def __init__(self, path: Path, backend: _HFBackend | _SPBackend, s: _Settings) -> None:
        self.path = str(path)
        self.kind = "sentencepiece" if isinstance(backend, _SPBackend) else "tokenizers"
        self._backend = backend
        self.vocab_size: int = backend.size
        self.all_special_ids: frozenset[int] = backend.special_ids  # what skip_special_tokens drops
        self._byte_ids: frozenset[int] = backend.byte_ids  # byte-fallback pieces: <0xE2>...
        self._cleanup = backend.cleanup and bool(s.cfg.get("clean_up_tokenization_spaces", False))
        self.chat_template: str | None = s.chat_template
        self.bos_token, self.bos_token_id = self._special(s, "bos")
        self.eos_token, self.eos_token_id = self._special(s, "eos")
        self.pad_token_id, self.unk_token_id = (
            self._special(s, "pad")[1],
            self._special(s, "unk")[1],
        )
        eos_ids = [i for i in [self.eos_token_id, *s.eos_ids] if i is not None]
        self.eos_token_ids = frozenset(i for i in eos_ids if 0 <= i < self.vocab_size)
        # What encode really puts around the text, whichever post-processor does it.
        full, plain = self.encode("a"), self.encode("a", add_special_tokens=False)
        k = next((k for k in range(len(full)) if full[k : k + len(plain)] == plain), 0)
        self.add_bos_token = self.bos_token_id is not None and self.bos_token_id in full[:k]
        self.add_eos_token = (
            self.eos_token_id is not None and self.eos_token_id in full[k + len(plain) :]
        )

    def _special(self, s: _Settings, key: str) -> tuple[str | None, int | None]:
        token = self._backend.named.get(f"{key}_token")
        tid = self.token_to_id(token) if token is not None else None
        if tid is None:  # no such token string: the id from generation_config / config.json
            tid = next(iter(_ints(s.ids.get(f"{key}_token_id"))), None)
            token = self.id_to_token(tid) if tid is not None else None
        return token, (tid if token is not None else None)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Ids of `text`, as ``AutoTokenizer.from_pretrained(folder)(text).input_ids``."""
        return self._backend.encode(text, add_special_tokens, False)

    def encode_continuation(self, text: str) -> list[int]:
        """Ids of `text` that directly follows other text: no BOS/EOS, no dummy-prefix "▁"."""
        return self._backend.encode(text, False, True)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids`, as ``AutoTokenizer.from_pretrained(folder).decode(ids)``."""
        text = self._backend.decode(ids, skip_special_tokens)
        return clean_up_tokenization(text) if self._cleanup else text

    def _decode_raw(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        """`decode` before transformers' clean-up (for the incremental detokenizer)."""
        return self._backend.decode(ids, skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def __repr__(self) -> str:
        return f"Tokenizer(path={self.path!r}, kind={self.kind!r}, vocab_size={self.vocab_size})"


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: no space before punctuation and contractions."""
    for old in (" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're"):
        text = text.replace(old, "'" if old == " ' " else old[1:])
    return text


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer of a Hugging Face folder: tokenizer.json if present, else tokenizer.model."""
    folder = Path(path)
    found = [folder / name for name in _FILES if (folder / name).is_file()]
    if not found:
        raise FileNotFoundError(f"no tokenizer in {folder}: looked for {' and '.join(_FILES)}")
    settings = _Settings(folder)
    backend = (_HFBackend if found[0].name == "tokenizer.json" else _SPBackend)(found[0], settings)
    return Tokenizer(folder, backend, settings)
