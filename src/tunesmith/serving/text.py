"""Generated tokens -> text deltas: the same deltas whether streamed or collected.

Text is decoded from all tokens so far (a token may complete a multi-byte character or merge with
the previous one); a tail that is an incomplete character or could start a stop string is held
back until it is settled, so no delta ever has to be taken back.
"""

from typing import Optional, Sequence


class TextTracker:
    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0  # characters of text already emitted

    def add(self, token: int) -> tuple[str, bool]:
        """(new text to emit, whether a stop string was reached)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = self._stop_at(text)
        if cut is not None:
            return self._emit(text[:cut]), True
        return self._emit(text[: len(text) - self._held_back(text)]), False

    def flush(self) -> str:
        """The held-back tail, when the generation ends for another reason (EOS, length)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self._emit(text.rstrip("\ufffd"))

    def _emit(self, upto: str) -> str:
        delta = upto[self.sent :]
        self.sent = max(self.sent, len(upto))
        return delta

    def _stop_at(self, text: str) -> Optional[int]:
        hits = [i for i in (text.find(s, max(0, self.sent - len(s))) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self, text: str) -> int:
        if text.endswith("\ufffd"):  # an incomplete multi-byte character
            return len(text) - len(text.rstrip("\ufffd"))
        for n in range(max((len(s) for s in self.stop), default=1) - 1, 0, -1):
            if any(s.startswith(text[-n:]) for s in self.stop):
                return n
        return 0
