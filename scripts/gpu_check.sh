#!/usr/bin/env bash
# The engine's GPU checks as one prepared run, for a lent GPU machine (the device tool: ~15
# minutes in all, a bare Python with torch and transformers but none of our other packages).
#
#   scripts/gpu_check.sh prepare   # here: the model's config + tokenizer and the wheels the
#                                  # tests import go to .gpu/ (ignored by git, ~4 MB)
#   scripts/gpu_check.sh run       # there: run(command="bash scripts/gpu_check.sh run",
#                                  #            carry=[".gpu"], timeout_s=570)
#
# `run` maps the llmserve packages onto PYTHONPATH (no install), runs the CUDA tests that need
# no weights (a random tiny Llama through the engine with CUDA graphs against transformers),
# then `bench/engine_bench.py --device cuda --random-weights` (SmolLM2 shape, bf16, 128-token
# prompts, 128 new tokens, concurrency 1/16/64/256, against eager `generate` and static cache +
# torch.compile). Everything it writes goes to $OUT (the device tool brings it back) or, without
# $OUT, to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=.gpu

prepare() {
  local model
  model=$(.venv/bin/python -c "from llmserve.common.model_store import resolve_model; print(resolve_model('SmolLM2-135M-Instruct'))")
  mkdir -p "$GPU_DIR/model" "$GPU_DIR/whl"
  cp "$model"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json} "$GPU_DIR/model/"
  cp "$model"/chat_template.jinja "$GPU_DIR/model/" 2>/dev/null || true
  # What tests/conftest.py imports beyond the device's own packages.
  .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 -d "$GPU_DIR/whl" redis==8.1.0
  grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
  du -sh "$GPU_DIR"
}

run() {
  local out=${OUT:-bench/results} site=/tmp/llmserve-site
  mkdir -p "$out" "$site/llmserve"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$GPU_DIR"/whl/*.whl
  # The package-dir mapping of pyproject.toml, as links: llmserve.<svc> -> services/<svc>.
  for d in common cli client; do ln -sfn "$PWD/libs/$d" "$site/llmserve/$d"; done
  for s in gateway scheduler worker monitor; do ln -sfn "$PWD/services/$s" "$site/llmserve/$s"; done
  export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1 LLMSERVE_TEST_TOKENIZER="$PWD/$GPU_DIR/model"
  { nvidia-smi; python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"; } \
    > "$out/gpu-machine.txt" 2>&1 || true
  timeout 120 python3 -m pytest -q -p no:cacheprovider -o addopts="--import-mode=importlib" \
    tests/unit/worker/engine/test_gpu.py -k tiny 2>&1 | tee "$out/gpu-tests.log" || true
  timeout 420 python3 bench/engine_bench.py --device cuda --random-weights --model "$GPU_DIR/model" \
    --out "$out/engine-cuda" 2>&1 | tee "$out/engine-cuda.log"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) sed -n 2,16p "$0"; exit 2 ;;
esac
