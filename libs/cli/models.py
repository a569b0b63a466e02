"""`llmserve models`: the model registry (register, list, activate, rollback, split), model tools
(export, quantize, prune) and the models a running worker holds (load, unload, loaded).
Registered by main.py through `register(sub, add_client_args)`.

A SOURCE is a model path (HF directory, .gguf, .pt/.pth, int8 directory) or a registry
reference: `name` (its active version), `name@v3`, `name@<alias>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from llmserve.common.settings import DEFAULT_REDIS_URL


def register(sub, add_client_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `models` and its subcommands to the `llmserve` subparsers."""
    models = sub.add_parser("models", help="model registry, export, quantization, pruning")
    msub = models.add_subparsers(dest="models_command", required=True)
    _add_registry_commands(msub)
    _add_tool_commands(msub)
    from .worker_models import add_commands

    add_commands(msub)  # load|unload|loaded on a running worker


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _add_registry_commands(msub) -> None:
    reg = _common(msub.add_parser("register", help="record a model path as a new version"))
    reg.add_argument("name")
    reg.add_argument("path")
    reg.add_argument("--format", choices=["hf", "gguf", "pt", "int8"], help="default: detected")
    reg.add_argument("--dtype", help="default: from config.json")
    reg.add_argument("--quantization", help="default: from the format")
    reg.add_argument("--activate", action="store_true", help="also point `active` at it")
    reg.set_defaults(func=lambda a: _run(_cmd_register, a))

    ls = _common(msub.add_parser("list", help="models, or one model's versions and aliases"))
    ls.add_argument("name", nargs="?")
    ls.set_defaults(func=lambda a: _run(_cmd_list, a))

    act = _common(msub.add_parser("activate", help="point an alias (default `active`) at a version"))
    act.add_argument("name")
    act.add_argument("version", help="e.g. v3")
    act.add_argument("--alias", default="active")
    act.set_defaults(func=lambda a: _run(_cmd_activate, a))

    rb = _common(msub.add_parser("rollback", help="move an alias back to its previous version"))
    rb.add_argument("name")
    rb.add_argument("--alias", default="active")
    rb.set_defaults(func=lambda a: _run(_cmd_rollback, a))

    sp = _common(msub.add_parser("split", help="send a share of an alias's traffic to other versions"))
    sp.add_argument("name")
    sp.add_argument("shares", nargs="*", metavar="VERSION=PCT", help="e.g. v3=10 (percent of requests)")
    sp.add_argument("--alias", default="active")
    sp.add_argument("--clear", action="store_true", help="send all traffic back to the alias's version")
    sp.set_defaults(func=lambda a: _run(_cmd_split, a))


def _add_tool_commands(msub) -> None:
    exp = _common(msub.add_parser("export", help="export logits graph to ONNX/TorchScript, verified"))
    exp.add_argument("source")
    exp.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    exp.add_argument("-o", "--output", required=True, help="file to write (.onnx or .pt)")
    exp.add_argument("--seq-len", type=int, default=16, help="fixed input length of the graph")
    exp.add_argument("--atol", type=float, default=1e-3, help="max |logit difference| accepted")
    exp.add_argument("--config-dir", help="config/tokenizer directory for a .pt source")
    exp.set_defaults(func=lambda a: _run(_cmd_export, a))

    q = _derive_parser(msub, "quantize", "write a quantized copy as a new version")
    q.add_argument("--mode", required=True, choices=["int8", "bf16", "fp16"])
    q.add_argument(
        "--int8-skip", default="down_proj",
        help="comma-separated Linear name suffixes int8 keeps fp32 ('' for none; default down_proj)",
    )  # fmt: skip
    q.set_defaults(func=lambda a: _run(_cmd_quantize, a))

    pr = _derive_parser(msub, "prune", "magnitude-prune Linear layers into a new version")
    pr.add_argument("--amount", type=float, required=True, help="fraction of weights (or rows) to zero")
    pr.add_argument("--structured", action="store_true", help="prune whole rows by L2 norm")
    pr.set_defaults(func=lambda a: _run(_cmd_prune, a))


def _derive_parser(msub, name: str, help_text: str) -> argparse.ArgumentParser:
    p = _common(msub.add_parser(name, help=help_text))
    p.add_argument("source")
    p.add_argument("-o", "--output", help="directory to write (default: under the llmserve cache)")
    p.add_argument("--name", help="model name to register under (default: the source's)")
    p.add_argument("--config-dir", help="config/tokenizer directory for a .pt source")
    p.add_argument("--eval-text", help="text for the perplexity delta (default: bench/data/perplexity.txt)")
    p.add_argument("--no-eval", action="store_true", help="skip the perplexity measurement")
    p.add_argument("--no-register", action="store_true", help="only write the files")
    p.add_argument("--activate", action="store_true", help="point `active` at the new version")
    return p


def _run(coro_fn, args) -> int:
    from llmserve.common.errors import LLMServeError
    from llmserve.common.model_store import ModelUnavailableError

    try:
        return asyncio.run(_with_registry(coro_fn, args))
    except (LLMServeError, ModelUnavailableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


async def _with_registry(coro_fn, args) -> int:
    from llmserve.common import redis_client
    from llmserve.common.models.registry import ModelRegistry

    client = redis_client.connect(args.redis_url, socket_timeout=None, connect_timeout=2)
    try:
        return await coro_fn(ModelRegistry(client), args)
    finally:
        await client.aclose()


def _emit(args, data, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


async def _cmd_register(registry, args) -> int:
    v = await registry.register(
        args.name, args.path, format=args.format, dtype=args.dtype,
        quantization=args.quantization, activate=args.activate,
    )  # fmt: skip
    _emit(args, v.__dict__, f"registered {v.ref}: {v.format} {v.dtype} sha256 {v.checksum[:12]}…")
    return 0


async def _cmd_list(registry, args) -> int:
    from .tables import table

    if not args.name:
        names = await registry.list_models()
        _emit(args, names, "\n".join(names) if names else "(no models registered)")
        return 0
    versions = await registry.versions(args.name)
    aliases = await registry.aliases(args.name)
    if args.json:
        _emit(args, {"versions": [v.__dict__ for v in versions],
                     "aliases": {a: x.__dict__ for a, x in aliases.items()}}, "")  # fmt: skip
        return 0
    pointing = {}
    for alias in aliases.values():
        pointing.setdefault(alias.version, []).append(alias.name)
    rows = [[v.version, ",".join(pointing.get(v.version, [])), v.format, v.dtype, v.quantization,
             v.checksum[:12], v.parent or "", v.path] for v in versions]  # fmt: skip
    headers = ["version", "aliases", "format", "dtype", "quant", "sha256", "parent", "path"]
    print(table(headers, rows) if rows else f"(model {args.name!r} has no versions)")
    return 0


async def _cmd_activate(registry, args) -> int:
    alias = await registry.activate(args.name, args.version, alias=args.alias)
    _emit(args, alias.__dict__, f"{args.name}@{alias.name} -> {alias.version}")
    return 0


async def _cmd_rollback(registry, args) -> int:
    alias = await registry.rollback(args.name, alias=args.alias)
    _emit(args, alias.__dict__, f"{args.name}@{alias.name} rolled back to {alias.version}")
    return 0


async def _cmd_split(registry, args) -> int:
    if args.clear == bool(args.shares):
        raise ValueError("give VERSION=PCT shares or --clear (not both)")
    if args.clear:
        alias = await registry.clear_split(args.name, alias=args.alias, by="cli")
        alias = alias or (await registry.aliases(args.name))[args.alias]
    else:
        alias = await registry.set_split(args.name, dict(_share(s) for s in args.shares), alias=args.alias)
    shares = ", ".join(f"{v} {p:g}%" for v, p in alias.split.items())
    _emit(
        args,
        alias.__dict__,
        f"{args.name}@{alias.name} -> {alias.version}" + (f" (split: {shares})" if shares else ""),
    )
    return 0


def _share(text: str) -> tuple[str, float]:
    version, _, percent = text.partition("=")
    try:
        return version, float(percent.rstrip("%"))
    except ValueError:
        raise ValueError(f"{text!r} is not VERSION=PCT (e.g. v3=10)") from None


async def _cmd_export(registry, args) -> int:
    from llmserve.common.models import export

    loaded, _, _ = await _load_source(registry, args)
    report = await asyncio.to_thread(
        export.export, loaded.model, args.output, args.format, seq_len=args.seq_len, atol=args.atol
    )
    data = {"format": report.format, "path": str(report.path), "seq_len": report.seq_len,
            "max_abs_diff": report.max_abs_diff, "argmax_agreement": report.argmax_agreement,
            "atol": report.atol, "ok": report.ok}  # fmt: skip
    verdict = "matches torch" if report.ok else "DOES NOT match torch"
    _emit(args, data, f"wrote {report.path}; {verdict}: max |Δlogit| {report.max_abs_diff:.2e} "
                      f"(atol {report.atol:g}), argmax agreement {report.argmax_agreement:.3f}")  # fmt: skip
    return 0 if report.ok else 2


async def _cmd_quantize(registry, args) -> int:
    from llmserve.common.models import variants

    skip = tuple(s for s in args.int8_skip.split(",") if s)
    return await _derive(registry, args, args.mode, lambda loaded, out, text: variants.quantize_variant(
        loaded, args.mode, out, text, int8_skip=skip))  # fmt: skip


async def _cmd_prune(registry, args) -> int:
    from llmserve.common.models import variants

    suffix = f"prune{'-rows' if args.structured else ''}-{args.amount:g}"
    return await _derive(registry, args, suffix, lambda loaded, out, text: variants.prune_variant(
        loaded, args.amount, args.structured, out, text))  # fmt: skip


async def _derive(registry, args, suffix: str, make) -> int:
    """Load SOURCE, make the variant, write it and register it as a new version."""
    from llmserve.common.model_store import cache_root
    from llmserve.common.models import variants

    loaded, name, parent = await _load_source(registry, args)
    name = args.name or name
    if not name and not args.no_register:
        raise ValueError("a path SOURCE needs --name to register the result (or --no-register)")
    parent_version = parent.split("@")[1] if parent else None
    out = Path(args.output) if args.output else variants.default_out_dir(
        cache_root() / "variants", name or "local", parent_version, suffix)  # fmt: skip
    text = None if args.no_eval else variants.read_eval_text(args.eval_text)
    variant = await asyncio.to_thread(make, loaded, out, text)
    result = {"path": str(variant.path), "metrics": variant.metrics}
    if not args.no_register:
        v = await registry.register(
            name, variant.path, format=variant.format, dtype=variant.dtype,
            quantization=variant.quantization, parent=parent, metrics=variant.metrics, activate=args.activate,
        )  # fmt: skip
        result["version"] = v.ref
    lines = [f"wrote {variant.path}"] + [f"  {k}: {v}" for k, v in variant.metrics.items()]
    if "version" in result:
        lines.append(f"registered {result['version']}" + (" (active)" if args.activate else ""))
    _emit(args, result, "\n".join(lines))
    return 0


async def _load_source(registry, args):
    """(LoadedModel, registry name or None, parent ref or None) for a path or a reference."""
    from llmserve.common.models.formats import load_model

    path = Path(args.source).expanduser()
    if path.exists():
        loaded = await asyncio.to_thread(load_model, path, config_dir=args.config_dir)
        return loaded, None, None
    version = await registry.resolve(args.source)
    loaded = await asyncio.to_thread(
        load_model, version.path, format=version.format, config_dir=args.config_dir
    )
    return loaded, version.name, version.ref
