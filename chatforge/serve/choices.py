"""One choice of a reply as its tokens arrive: text cut before the first stop string, held back while its
end could still begin one, and the logprobs of the tokens whose text went out.

The stop check looks at each character once (Knuth-Morris-Pratt), so its cost per token does not grow
with the reply or with the stop strings' length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chatforge.generation import IncrementalDecoder


def prefix_table(stop: str) -> list[int]:
    """KMP's failure function: table[i] is the longest proper prefix of stop[:i + 1] that is also its suffix."""
    table, k = [0] * len(stop), 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = table[k - 1]
        if stop[i] == stop[k]:
            k += 1
        table[i] = k
    return table


class StopMatcher:
    """Finds the first stop string in text that arrives in pieces; remembers how much of each is under way."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.tables = [prefix_table(s) for s in stops]
        self.matched = [0] * len(stops)  # per stop: its longest prefix that the text so far ends with
        self.length = 0  # characters fed so far

    def feed(self, piece: str) -> int:
        """Take the next piece; return where (in the whole text) the earliest stop string found in it starts, or -1."""
        first = -1
        for n, (stop, table) in enumerate(zip(self.stops, self.tables)):
            k = self.matched[n]
            for offset, char in enumerate(piece):
                while k and stop[k] != char:
                    k = table[k - 1]
                if stop[k] == char:
                    k += 1
                if k == len(stop):
                    start = self.length + offset + 1 - k
                    first = start if first < 0 else min(first, start)
                    k = table[k - 1]  # as if unmatched: the caller ends the reply here anyway
                    break
            self.matched[n] = k
        self.length += len(piece)
        return first

    def pending(self) -> int:
        """Characters at the end of the text that may be the start of a stop string."""
        return max(self.matched, default=0)


@dataclass
class Choice:
    """A choice's state: `add` each token, `finish` at the end; both return (text to send, logprobs to send)."""

    decoder: IncrementalDecoder
    matcher: StopMatcher
    parts: list[str] = field(default_factory=list)  # text handed out (joined once, at the end: no copying per token)
    held: str = ""  # text not yet handed out: it may begin a stop string, or its last character is incomplete
    tokens: int = 0  # generated tokens, a stop token included
    finish_reason: str | None = None  # "stop" (stop token or stop string) or "length"
    logprobs: list[dict] = field(default_factory=list)  # entries handed out, one per token of the text
    unsent: list[dict] = field(default_factory=list)  # entries of tokens whose text is still held back

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, token: int, stop_token_ids: list[int], logprob: dict | None = None) -> tuple[str, list[dict]]:
        """Take one generated token (and its logprob entry, if asked for)."""
        if self.finish_reason is not None:
            return "", []
        self.tokens += 1
        if token in stop_token_ids:  # the stop token is not part of the reply: no logprob entry
            return self._extend(self.decoder.flush(), end="stop")
        if logprob is not None:
            self.unsent.append(logprob)
        return self._extend(self.decoder.add(token))

    def finish(self) -> tuple[str, list[dict]]:
        """The generation ended: release what was held back; no stop seen means it was cut ("length")."""
        if self.finish_reason is not None:
            return "", []
        return self._extend(self.decoder.flush(), end="length")

    def _extend(self, new_text: str, end: str | None = None) -> tuple[str, list[dict]]:
        sent = self.matcher.length - len(self.held)  # characters handed out before this piece
        hit = self.matcher.feed(new_text)
        text = self.held + new_text
        if hit >= 0:
            text, end = text[:hit - sent], "stop"
        self.finish_reason = end
        keep = 0 if end else self.matcher.pending()
        piece, self.held = text[:len(text) - keep], text[len(text) - keep:]
        entries = []
        if piece or end == "length":  # a stop string's own tokens get no entries
            entries, self.unsent = self.unsent, []
            self.logprobs += entries
        if piece:
            self.parts.append(piece)
        return piece, entries
