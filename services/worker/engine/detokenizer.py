"""Incremental detokenization with stop strings.

Text is produced token by token the way TGI/vLLM do it: decode a short window of recent
tokens twice (with and without the new ones) and emit the difference. A window that ends in
an incomplete UTF-8 sequence decodes to U+FFFD; that text is held until a later token
completes the character, so a client never sees a broken character.

Stop strings: text that could be the beginning of a stop string is held back until it is
clearly not one; when a stop string appears, the text before it is emitted and the stop
string itself is not.
"""

from __future__ import annotations

from dataclasses import dataclass

# Prompt tokens kept as left context: byte-level and SentencePiece tokenizers decode a token
# differently at the start of a string (leading space), so we never decode from scratch.
_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


@dataclass
class DetokResult:
    """What one `DetokenizerStep` produced."""

    text: str  # text safe to emit now
    stopped: bool = False  # a stop string was found (text ends right before it)


class IncrementalDetokenizer:
    """Per-sequence detokenizer state; `add_tokens` returns text safe to emit."""

    def __init__(self, tokenizer, context_ids: list[int], stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.ids: list[int] = list(context_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.stop = tuple(s for s in stop if s)
        self.pending = ""  # decoded but not yet emitted (possible stop-string start)
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _decode_new(self) -> str:
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.ids[self.prefix_offset :])
        if full_text.endswith(_REPLACEMENT) or len(full_text) <= len(prefix_text):
            # Incomplete character (or nothing new yet): wait for more tokens.
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        return full_text[len(prefix_text) :]

    def add_tokens(self, token_ids: list[int]) -> DetokResult:
        """Feed new completion tokens; return the text they make safe to emit."""
        if self.stopped:
            return DetokResult("", True)
        self.ids.extend(token_ids)
        self.pending += self._decode_new()
        # Keep the window short so each decode stays O(1) in the sequence length.
        if self.prefix_offset > 64:
            drop = self.prefix_offset
            self.ids = self.ids[drop:]
            self.prefix_offset -= drop
            self.read_offset -= drop
        return self._release()

    def _release(self) -> DetokResult:
        if not self.stop:
            text, self.pending = self.pending, ""
            return DetokResult(text)
        cut = -1
        for s in self.stop:
            pos = self.pending.find(s)
            if pos != -1 and (cut == -1 or pos < cut):
                cut = pos
        if cut != -1:
            self.stopped = True
            text, self.pending = self.pending[:cut], ""
            return DetokResult(text, True)
        hold = self._stop_prefix_len(self.pending)
        split = len(self.pending) - hold
        text, self.pending = self.pending[:split], self.pending[split:]
        return DetokResult(text)

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """At finish (EOS or length): held stop-prefix text is real text; incomplete
        characters at the very end are dropped rather than emitted broken."""
        if self.stopped:
            return ""
        text, self.pending = self.pending, ""
        return text
