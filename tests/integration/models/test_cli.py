"""`llmserve models ...` end to end: real Redis, the tiny model, files on disk."""

import json
import re

import pytest

from llmserve.cli.main import main
from llmserve.common.models import formats, prune


def _run(capsys, *argv, stdout_only=False) -> tuple[int, str]:
    code = main(["models", *argv])
    out, err = capsys.readouterr()
    return code, out if stdout_only else out + err


def _json(capsys, redis_url, *argv):
    # stdout only: libraries write progress bars and warnings to stderr
    code, out = _run(capsys, *argv, "--redis-url", redis_url, "--json", stdout_only=True)
    assert code == 0, out
    return json.loads(out)


def test_register_list_activate_rollback(capsys, redis_url, tiny_dir):
    assert _json(capsys, redis_url, "register", "tiny", str(tiny_dir), "--activate")["version"] == "v1"
    assert _json(capsys, redis_url, "register", "tiny", str(tiny_dir))["version"] == "v2"
    assert _json(capsys, redis_url, "activate", "tiny", "v2")["version"] == "v2"
    code, table = _run(capsys, "list", "tiny", "--redis-url", redis_url)
    assert code == 0 and re.search(r"^v2 +active +hf", table, re.M)
    assert _json(capsys, redis_url, "rollback", "tiny")["version"] == "v1"
    assert _json(capsys, redis_url, "list") == ["tiny"]
    code, out = _run(capsys, "rollback", "tiny", "--redis-url", redis_url)
    assert code == 1 and "no earlier version" in out


def test_quantize_and_prune_register_new_versions(capsys, redis_url, tiny_dir, tmp_path):
    text = tmp_path / "eval.txt"
    text.write_text("Models are registered, activated and rolled back. " * 30)
    _json(capsys, redis_url, "register", "tiny", str(tiny_dir), "--activate")
    q = _json(capsys, redis_url, "quantize", "tiny", "--mode", "int8", "-o", str(tmp_path / "q"),
              "--eval-text", str(text))  # fmt: skip
    assert q["version"] == "tiny@v2"
    assert {"perplexity_before", "perplexity", "perplexity_delta"} <= q["metrics"].keys()
    p = _json(capsys, redis_url, "prune", "tiny@v1", "--amount", "0.3", "--structured",
              "-o", str(tmp_path / "p"), "--no-eval", "--activate")  # fmt: skip
    assert p["version"] == "tiny@v3" and p["metrics"]["sparsity"] == pytest.approx(0.3, abs=0.01)
    listed = _json(capsys, redis_url, "list", "tiny")
    v2, v3 = listed["versions"][1], listed["versions"][2]
    assert (v2["format"], v2["quantization"], v2["parent"]) == ("int8", "int8-dynamic", "tiny@v1")
    assert v3["quantization"] == "pruned-structured-0.3" and listed["aliases"]["active"]["version"] == "v3"
    assert formats.load_model(v2["path"]).format == "int8"
    assert prune.measure(formats.load_model(v3["path"]).model).sparsity == pytest.approx(0.3, abs=0.01)


def test_export_onnx_reports_the_match(capsys, redis_url, tiny_dir, tmp_path):
    out = _json(capsys, redis_url, "export", str(tiny_dir), "--format", "onnx", "-o", str(tmp_path / "m.onnx"),
                "--seq-len", "8")  # fmt: skip
    assert out["ok"] and out["max_abs_diff"] < 1e-3 and out["argmax_agreement"] == 1.0
