import pytest
import torch

from llmserve.common.models import evaluate, formats, prune, quantize


def test_int8_dynamic_runs_and_stays_close(tiny, tiny_dir, tmp_path):
    ids = torch.randint(0, 49152, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want = tiny.model(ids).logits
        q = quantize.quantize_int8_dynamic(tiny.model)
        got = q(ids).logits
    dynamic_linear = torch.ao.nn.quantized.dynamic.Linear
    # every block Linear but down_proj (kept fp32 by default), plus the head
    assert sum(isinstance(m, dynamic_linear) for m in q.modules()) == 2 * 6 + 1
    assert isinstance(q.model.layers[0].mlp.down_proj, torch.nn.Linear)
    assert (got - want).abs().max() < 0.1 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8
    # the int8 artifact reloads to the very same logits
    out = quantize.save_int8(q, tiny.tokenizer, tmp_path / "int8")
    back = formats.load_model(out)
    assert back.format == formats.INT8
    with torch.inference_mode():
        assert torch.equal(back.model(ids).logits, got)


def test_int8_with_nothing_skipped_quantizes_every_linear(tiny, tmp_path):
    q = quantize.quantize_int8_dynamic(tiny.model, per_channel=False, skip=())
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in q.modules()) == 2 * 7 + 1
    back = formats.load_model(
        quantize.save_int8(q, tiny.tokenizer, tmp_path / "q", per_channel=False, skip=())
    )
    ids = torch.arange(10).unsqueeze(0)
    with torch.inference_mode():
        assert torch.equal(back.model(ids).logits, q(ids).logits)


def test_bf16_cast():
    from llmserve.common.models.quantize import apply

    m = torch.nn.Linear(4, 4)
    assert apply(m, "bf16").weight.dtype == torch.bfloat16
    with pytest.raises(ValueError):
        apply(m, "int4")


@pytest.mark.parametrize("structured", [False, True])
def test_pruning_reaches_the_asked_sparsity(tiny, structured):
    before = evaluate.weight_bytes(tiny.model)
    report = prune.prune_model(tiny.model, 0.3, structured=structured)
    assert report.layers == 2 * 7  # q, k, v, o, gate, up, down per block
    assert report.sparsity == pytest.approx(0.3, abs=0.01)
    # permanent: no masks or hooks left, zeros in the plain weight
    for _, m in prune.prunable_linears(tiny.model):
        assert not hasattr(m, "weight_mask") and not m._forward_pre_hooks
    assert prune.measure(tiny.model).zero_params == report.zero_params
    assert evaluate.weight_bytes(tiny.model) == before
    # the embedding (tied to the head) is untouched
    assert (tiny.model.model.embed_tokens.weight == 0).float().mean() < 0.01
    if structured:
        rows_zero = [
            (m.weight.abs().sum(1) == 0).float().mean() for _, m in prune.prunable_linears(tiny.model)
        ]
        assert all(r == pytest.approx(0.3, abs=0.02) for r in rows_zero)


def test_pruned_version_saves_and_reloads_with_zeros(tiny, tmp_path):
    from llmserve.common.models import variants

    v = variants.prune_variant(tiny, 0.5, False, tmp_path / "pruned", eval_text="a small text to score " * 20)
    assert v.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert "perplexity_delta" in v.metrics
    back = formats.load_model(v.path)
    assert prune.measure(back.model).sparsity == pytest.approx(0.5, abs=0.01)


def test_perplexity_of_a_uniform_model_is_the_vocab_size():
    class Uniform(torch.nn.Module):
        def forward(self, input_ids, use_cache=False):
            from types import SimpleNamespace

            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 100))

    ids = torch.randint(0, 100, (300,))
    assert evaluate.perplexity(Uniform(), ids, window=64) == pytest.approx(100, rel=1e-4)


def test_the_fixed_evaluation_text_ships_with_the_repo():
    from llmserve.common.models import variants

    text = variants.read_eval_text(None)
    assert text and len(text.split()) > 2000
