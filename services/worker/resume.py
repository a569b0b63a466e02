"""Resuming a request another worker started: the text the client is still owed.

The previous worker may have decoded text it did not send yet (an incomplete UTF-8
character, a possible stop-string start). The client has `resume_text`; the engine, primed
with the resume tokens, will only emit text for new tokens. The difference is sent first.
"""

from __future__ import annotations

_CONTEXT = 5  # prompt tokens of left context, as the engine's detokenizer uses


def owed_text(tokenizer, prompt_ids: list[int], resume_ids: list[int], delivered_text: str) -> str:
    if tokenizer is None or not resume_ids:
        return ""
    context = list(prompt_ids[-_CONTEXT:])

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    full = decode(context + list(resume_ids))[len(decode(context)):]
    if not full.startswith(delivered_text):
        return ""  # the client's text is not a prefix: never send something inconsistent
    owed = full[len(delivered_text):]
    return "" if owed.endswith("\ufffd") else owed
