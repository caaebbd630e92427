"""Per-request output text: incremental detokenization and stop strings.

Stop strings are matched on the text, across token and stream-chunk boundaries, and never
leak: text that could still turn out to be the start of a stop string is held back until
it cannot.
"""

from __future__ import annotations

from blendrt.tokenizer.detokenizer import IncrementalDetokenizer
from blendrt.tokenizer.tokenizer import Tokenizer


class OutputText:
    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...]) -> None:
        self._detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
        self._stop = stop
        self._max_stop = max(map(len, stop), default=0)
        self.text = ""  # text so far, cut before a stop string once one is found
        self._num_emitted = 0  # characters of self.text already returned
        self._token_ends: list[int] = []  # {token index: len(text) after that token}
        self.stopped = False

    def add(self, token_id: int, *, check_stops: bool = True) -> None:
        """Appends one generated token; sets `stopped` if a stop string completed (looked
        for only with check_stops: not before min_tokens)."""
        start = max(0, len(self.text) - self._max_stop + 1)
        self.text += self._detok.add(token_id)
        self._token_ends.append(len(self.text))
        if check_stops:
            self._find_stop(start)

    def finish(self) -> None:
        """The request ended for another reason: flush what the detokenizer holds back."""
        if not self.stopped:
            start = max(0, len(self.text) - self._max_stop + 1)
            self.text += self._detok.flush()
            self._find_stop(start)

    def _find_stop(self, start: int) -> None:
        hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def take_delta(self, final: bool) -> str:
        """New text that is safe to show: all of it when final, else all but a tail that
        may still begin a stop string."""
        end = len(self.text)
        if not final:
            for k in range(min(self._max_stop - 1, end - self._num_emitted), 0, -1):
                tail = self.text[end - k :]
                if any(s.startswith(tail) for s in self._stop):
                    end -= k
                    break
        delta = self.text[self._num_emitted : end]
        self._num_emitted = end
        return delta

    def num_reply_tokens(self) -> int:
        """How many generated tokens lie wholly inside the final text."""
        n = 0
        while n < len(self._token_ends) and self._token_ends[n] <= len(self.text):
            n += 1
        return n
