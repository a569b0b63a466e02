"""Incremental detokenization: UTF-8 safety and stop strings split across tokens."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llmserve.worker.engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tok(model_dir):
    return AutoTokenizer.from_pretrained(str(model_dir))


def _stream(tok, text, stop=(), context=None):
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, context or tok.encode("Answer:", add_special_tokens=False), stop)
    pieces = []
    for t in ids:
        result = detok.add_tokens([t])
        pieces.append(result.text)
        if result.stopped:
            return pieces, True
    pieces.append(detok.flush())
    return pieces, False


MULTIBYTE = " Café déjà vu 😀🎉 naïve 日本語 ✓ Zürich"


def test_multibyte_text_never_emits_broken_characters(tok):
    ids = tok.encode(MULTIBYTE, add_special_tokens=False)
    # The test means something only if some token is a partial character on its own.
    assert any("\ufffd" in tok.decode([t]) for t in ids)
    pieces, _ = _stream(tok, MULTIBYTE)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == MULTIBYTE


def test_stop_string_split_across_tokens_is_not_emitted(tok):
    text = " The quick brown fox jumps over the lazy dog."
    pieces, stopped = _stream(tok, text, stop=("ox jum",))
    assert stopped and "".join(pieces) == " The quick brown f"


def test_held_back_prefix_is_released_when_not_a_stop(tok):
    text = " one two three four"
    pieces, stopped = _stream(tok, text, stop=("two thirty",))
    assert not stopped and "".join(pieces) == text
    # After " two", "two" could still become "two thirty": it was held back.
    assert pieces[0] + pieces[1] == " one "


def test_earliest_of_several_stop_strings_wins(tok):
    pieces, stopped = _stream(tok, " alpha beta gamma delta", stop=("delta", "beta"))
    assert stopped and "".join(pieces) == " alpha "


def test_stop_string_with_multibyte_characters(tok):
    pieces, stopped = _stream(tok, " caf\u00e9 \U0001f600 end", stop=("\U0001f600",))
    assert stopped and "".join(pieces) == " café " and all("\ufffd" not in p for p in pieces)
