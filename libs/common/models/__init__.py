"""Models beyond one directory: formats, the Redis registry, export, quantization, pruning.

- `formats`: load HF directories, GGUF (converted once, cached), `.pt` state dicts, int8 dirs.
- `registry`: names -> versions -> aliases in Redis, activate and rollback (async).
- `export`: ONNX / TorchScript logits graphs, verified against torch.
- `quantize`, `prune`, `variants`: derive new versions; `evaluate`: perplexity, decode speed.
"""
