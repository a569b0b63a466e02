"""Per-token log probabilities in the two OpenAI shapes (chat `content` list, completions' parallel lists).

Token strings are each token decoded alone (a token that is part of a multi-byte character
decodes to U+FFFD, as OpenAI's own `token` does; `bytes` carries that string's UTF-8).
"""

from __future__ import annotations

from typing import Any

from llmserve.common.logprobs import TokenLogprob


class LogprobsFormatter:
    """Formats one choice's logprobs; keeps the running text offset for completions."""

    def __init__(self, tokenizer: Any, chat: bool, offset: int = 0):
        self.tokenizer = tokenizer
        self.chat = chat
        self.offset = offset
        self._cache: dict[int, str] = {}

    def token(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self.tokenizer.decode([token_id])
        return text

    def format(self, logprobs: list[TokenLogprob]) -> dict:
        return self._chat(logprobs) if self.chat else self._completion(logprobs)

    def _chat(self, logprobs: list[TokenLogprob]) -> dict:
        content = []
        for lp in logprobs:
            entry = self._entry(lp.token_id, lp.logprob)
            entry["top_logprobs"] = [self._entry(t, v) for t, v in lp.top]
            content.append(entry)
        return {"content": content, "refusal": None}

    def _entry(self, token_id: int, logprob: float) -> dict:
        text = self.token(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    def prompt(self, first_id: int, logprobs: list[TokenLogprob]) -> dict:
        """The echoed prompt's entries: its first token has no logprob (null, as OpenAI)."""
        head = self._completion([None], first_id)
        rest = self._completion(logprobs)
        return {k: head[k] + rest[k] for k in head}

    def _completion(self, logprobs: list[TokenLogprob | None], first_id: int = 0) -> dict:
        tokens, values, tops, offsets = [], [], [], []
        for lp in logprobs:
            text = self.token(lp.token_id if lp is not None else first_id)
            tokens.append(text)
            offsets.append(self.offset)
            self.offset += len(text)
            values.append(lp.logprob if lp is not None else None)
            tops.append(None if lp is None else {self.token(t): v for t, v in lp.top})
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
