import pytest
import torch

from llmserve.common.model_store import ModelUnavailableError
from llmserve.common.models import evaluate, formats


def _greedy(loaded, n=12):
    ids = loaded.tokenizer("The registry keeps every version", return_tensors="pt").input_ids
    return evaluate.greedy_decode(loaded.model, ids, n).tokens


def test_detect_format(tiny_dir, tmp_path):
    assert formats.detect_format(tiny_dir) == formats.HF
    assert formats.detect_format(tmp_path / "m.gguf") == formats.GGUF
    assert formats.detect_format(tmp_path / "m.pth") == formats.STATE_DICT
    with pytest.raises(ModelUnavailableError):
        formats.detect_format(tmp_path)  # a directory without config.json


def test_state_dict_gives_the_same_greedy_output(tiny, tiny_dir, tmp_path):
    pt = formats.save_state_dict(tiny.model, tmp_path / "weights.pt")
    from_pt = formats.load_model(pt, config_dir=tiny_dir)
    assert from_pt.format == formats.STATE_DICT
    # tied head: re-tied on load, not stored twice
    assert from_pt.model.lm_head.weight.data_ptr() == from_pt.model.model.embed_tokens.weight.data_ptr()
    assert _greedy(from_pt) == _greedy(tiny)
    for (name, a), b in zip(
        tiny.model.state_dict().items(), from_pt.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_wrapped_checkpoint_is_unwrapped(tiny, tiny_dir, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": tiny.model.state_dict(), "step": 7}, path)
    assert _greedy(formats.load_model(path, config_dir=tiny_dir)) == _greedy(tiny)


def test_state_dict_that_does_not_match_the_config_is_refused(tiny, tiny_dir, tmp_path):
    state = tiny.model.state_dict()
    del state["model.norm.weight"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelUnavailableError, match="model.norm.weight"):
        formats.load_model(tmp_path / "bad.pt", config_dir=tiny_dir)


def test_state_dict_without_config_is_a_clear_error(tiny, tmp_path):
    formats.save_state_dict(tiny.model, tmp_path / "w.pt")
    with pytest.raises(ModelUnavailableError, match="config.json"):
        formats.load_model(tmp_path / "w.pt")


def test_checksum_is_sha256_of_the_weights_file(tiny_dir):
    import hashlib

    want = hashlib.sha256((tiny_dir / "model.safetensors").read_bytes()).hexdigest()
    assert formats.weights_checksum(tiny_dir) == want
