from llmserve.common.models import export


def test_onnx_export_matches_torch_logits(tiny, tmp_path):
    report = export.export_onnx(tiny.model, tmp_path / "tiny.onnx", seq_len=8, atol=1e-4)
    assert report.ok, report
    assert report.argmax_agreement == 1.0
    assert (tmp_path / "tiny.onnx").is_file()


def test_torchscript_export_matches_torch_logits(tiny, tmp_path):
    report = export.export_torchscript(tiny.model, tmp_path / "tiny.ts", seq_len=8, atol=1e-5)
    assert report.ok, report
    assert report.argmax_agreement == 1.0
