"""Streaming text out of token ids: an incremental detokenizer with stop strings.

Decoding each new token alone breaks multi-byte characters and (for SentencePiece) leading
spaces, and decoding the whole growing list every step costs O(n²). As vLLM does, we decode a
short window twice (``ids[prefix:read]`` and ``ids[prefix:]``) and emit the new suffix, holding
it back while it ends in an incomplete UTF-8 sequence (U+FFFD). Stop strings are cut here too:
text that could be the start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["IncrementalDetokenizer"]


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()):
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._held = ""  # decoded text not emitted yet (it may begin a stop string)
        self.stopped = False  # a stop string was found; no more text will be emitted

    @property
    def token_count(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> tuple[int, ...]:
        """Every id fed so far."""
        return tuple(self._ids)

    def add(self, new_ids: Sequence[int]) -> str:
        """Feed new token ids; returns the text that is now safe to emit ("" if none)."""
        if self.stopped or not new_ids:
            return ""
        self._ids.extend(new_ids)
        ids = self._ids
        prefix_text = self._decode(ids[self._prefix:self._read]) if self._read > self._prefix else ""
        full = self._decode(ids[self._prefix:])
        if len(full) <= len(prefix_text) or full.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        piece = full[len(prefix_text):]
        self._prefix, self._read = self._read, len(ids)
        return self._cut(piece)

    def flush(self) -> str:
        """At the end of generation: whatever was held back (it did not become a stop string)."""
        if self.stopped:
            return ""
        out, self._held = self._held, ""
        return out

    def _cut(self, piece: str) -> str:
        if not self._stop:
            return piece
        text = self._held + piece
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[: min(hits)]
        keep = 0  # the longest suffix of text that is a proper prefix of some stop string
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:n]):
                    keep = n
                    break
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]
