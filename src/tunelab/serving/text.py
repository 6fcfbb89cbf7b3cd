"""From token ids to text while they stream: incremental detokenization and stop sequences.

Byte-level tokenizers split characters across tokens, so text is released only when the decoded tail no
longer ends in a partial character; and text that could be the beginning of a stop sequence is held back
until it is known not to be one. The released text is therefore final: it never has to be taken back.
"""

from __future__ import annotations

__all__ = ["TextAssembler"]


class TextAssembler:
    """Turns one choice's token ids into text deltas and finds stop sequences.

    Args:
        tokenizer: the served model's tokenizer.
        stop: stop sequences; the answer ends before the first one found (it is not included).
    """

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far (up to the stop sequence once one is found)
        self.sent = 0  # characters of `text` already released
        self.stopped = False
        self._prefix = 0  # decode window: ids[_prefix:_read] were decoded into text already
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _new_text(self) -> str:
        # Decode a small window ending at the new token and diff it against the same window without it:
        # cheaper than decoding everything, and exact for tokenizers whose spaces depend on neighbours.
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before):]
        return ""

    def _held(self) -> int:
        """Characters at the end of the text that could start a stop sequence."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text) - self.sent), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def feed(self, token_id: int) -> str:
        """Add one token; returns the text that can be released now ('' when held back or stopped)."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        self.text += self._new_text()
        cut = self._find_stop()
        if cut is not None:
            self.stopped = True
            self.text = self.text[:cut]
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held())

    def _find_stop(self) -> int | None:
        hits = [i for s in self.stop if (i := self.text.find(s, max(self.sent - len(s) + 1, 0))) >= 0]
        return min(hits) if hits else None

    def _release(self, end: int) -> str:
        if end <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:end], end
        return out

    def flush(self) -> str:
        """At the end of generation: release what was held back (a partial stop sequence is plain text)."""
        if not self.stopped and self._read < len(self.ids):
            rest = self._decode(self.ids[self._prefix:])
            before = self._decode(self.ids[self._prefix:self._read])
            self.text += rest[len(before):]  # a trailing partial character, rendered as the tokenizer does
        return self._release(len(self.text))
