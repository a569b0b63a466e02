from pathlib import Path

import pytest

from llmserve.common import model_store


def test_cached_model_is_not_converted_again(tmp_path, monkeypatch):
    target = tmp_path / "models" / model_store.DEFAULT_MODEL
    target.mkdir(parents=True)
    (target / model_store._COMPLETE_MARKER).write_text("done")

    def fail(*_a, **_k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(model_store, "_convert_gguf", fail)
    assert model_store.resolve_model(model_store.DEFAULT_MODEL, cache_dir=tmp_path) == target


def test_interrupted_conversion_is_redone(tmp_path, monkeypatch):
    (tmp_path / "models" / model_store.DEFAULT_MODEL).mkdir(parents=True)  # no completion marker
    calls = []
    monkeypatch.setattr(model_store, "_convert_gguf", lambda src, dst, log: calls.append(dst))
    monkeypatch.setattr(model_store.GGUFSource, "locate", lambda self: Path("x.gguf"))
    model_store.resolve_model(model_store.DEFAULT_MODEL, cache_dir=tmp_path)
    assert calls == [tmp_path / "models" / model_store.DEFAULT_MODEL]


def test_directory_is_used_as_is(tmp_path):
    assert model_store.resolve_model(str(tmp_path)) == tmp_path


def test_unknown_name_is_a_clear_error():
    with pytest.raises(model_store.ModelUnavailableError, match="unknown model"):
        model_store.resolve_model("no-such-model")


def test_real_model_converts_to_safetensors(model_path):
    assert (model_path / "model.safetensors").is_file()
    assert (model_path / "tokenizer.json").is_file()
