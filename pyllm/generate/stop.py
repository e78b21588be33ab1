"""Stop strings in a text stream: `StopMatcher` holds back streamed text that could be the start
of a stop string, so no part of a stop string is ever shown. Works on text, after detokenizing;
not here: end-of-generation tokens (the engine stops on those), the tokenizer.
"""
from __future__ import annotations

from typing import Iterable


class StopMatcher:
    """Holds back streamed text that could be the start of a stop string.

    feed(text) returns the text that can no longer be part of a stop string; once a stop string
    is complete, feed returns the text before it and `stopped` becomes True (the stop string and
    anything after it are never emitted). flush() returns the held-back tail at the end of a
    stream that did not stop. Everything emitted, concatenated, is the streamed text cut at the
    first occurrence of any stop string."""

    def __init__(self, stops: Iterable[str]):
        if isinstance(stops, str):
            stops = [stops]
        self.stops = [s for s in stops if s]
        for s in self.stops:
            if not isinstance(s, str):
                raise TypeError(f"stop strings must be str, got {type(s).__name__}")
        self.stopped = False
        self.stop_string: str | None = None   # the stop string that matched
        self._held = ""

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self._held + text
        first = -1
        for s in self.stops:
            at = buf.find(s)
            if at != -1 and (first == -1 or at < first):
                first, self.stop_string = at, s
        if first != -1:
            self.stopped = True
            self._held = ""
            return buf[:first]
        keep = self._partial_stop_len(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep]

    def _partial_stop_len(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:k]):
                    best = k
                    break
        return best

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held
