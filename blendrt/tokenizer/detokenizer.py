"""Streaming detokenization: the text of each new token as it is generated.

`IncrementalDetokenizer` returns text deltas whose concatenation (with `flush`) is exactly
``tokenizer.decode(ids, skip_special_tokens=...)``, and never returns a broken character that
the full decode does not have at that place. Each step decodes only a short window of recent
ids (vLLM's prefix/read offsets), so a step costs O(window), not O(length):

* ``decode(ids[prefix:read])`` is the text already emitted for the window's head; the delta is
  ``decode(ids[prefix:])`` past it. Decoders that strip the first token's leading space strip
  the same token in both, so the delta is unaffected.
* A window whose text ends in U+FFFD is held back: a multi-byte character may be incomplete.
* Byte-fallback pieces (``<0xE2>``) are held back until a non-byte token follows. transformers
  decodes each run of byte pieces as a whole, and a run that is not valid UTF-8 becomes one
  U+FFFD per byte, so a later byte can still turn an already complete "€" into "����".
  Special tokens dropped by ``skip_special_tokens`` do not end a run (they are not decoded).
* When the tokenizer applies transformers' clean-up (" ." -> "."; Unigram models only), raw
  text is held until its last 4 characters contain no space, the longest clean-up pattern, so
  cleaning the emitted pieces one by one equals cleaning the whole text.
"""

from __future__ import annotations

from blendrt.tokenizer.tokenizer import Tokenizer, clean_up_tokenization

_LONGEST_CLEANUP = 4  # " n't", " 've", " 're"


class IncrementalDetokenizer:
    """Turns one sequence's generated ids into text, one id at a time."""

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._skipped = tokenizer.all_special_ids if skip_special_tokens else frozenset()
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids before this are emitted; ids[prefix:read] give _prefix_text
        self._prefix_text = ""
        self._raw: list[str] = []  # raw (uncleaned) text emitted, for the rare fallback
        self._pending = ""  # raw text held for clean-up
        self._out: list[str] = []

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self._out)

    @property
    def token_ids(self) -> list[int]:
        """Every id added so far."""
        return list(self._ids)

    def add(self, token_id: int) -> str:
        """Add one generated id; return the text it completes (may be "")."""
        self._ids.append(token_id)
        if token_id in self._skipped or token_id in self._tokenizer._byte_ids:
            return ""  # no text of its own now; a byte piece waits for the end of its run
        return self._step(final=False)

    def flush(self) -> str:
        """Return whatever is held back (at the end of generation)."""
        return self._step(final=True)

    def _decode(self, start: int, stop: int | None = None) -> str:
        return self._tokenizer._decode_raw(self._ids[start:stop], self._skip)

    def _step(self, final: bool) -> str:
        new_text = self._decode(self._prefix)
        if not final and (new_text.endswith("\ufffd") or len(new_text) <= len(self._prefix_text)):
            return ""
        if new_text.startswith(self._prefix_text):
            delta = new_text[len(self._prefix_text) :]
        else:  # a decoder that is not prefix-stable over this window: diff the whole text
            done = "".join(self._raw)
            full = self._decode(0)
            delta = full[len(done) :] if full.startswith(done) else ""
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = self._decode(self._prefix, self._read)
        self._raw.append(delta)
        return self._emit(delta, final)

    def _emit(self, raw: str, final: bool) -> str:
        if not self._tokenizer._cleanup:
            out = raw
        else:
            self._pending += raw
            cut = len(self._pending)
            while (
                not final and cut > 0 and " " in self._pending[max(0, cut - _LONGEST_CLEANUP) : cut]
            ):
                cut -= 1
            out = clean_up_tokenization(self._pending[:cut])
            self._pending = self._pending[cut:]
        self._out.append(out)
        return out
