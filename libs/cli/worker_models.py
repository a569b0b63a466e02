"""`llmserve models load|unload|loaded --worker ADDR`: the models held by one worker.

A REF is what a worker can load: a built-in name, a model directory on the worker's machine,
or a registry reference (`name`, `name@v3`, `name@<alias>`), which the worker resolves to the
concrete `name@vN` it then serves.
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_WORKER = "127.0.0.1:50053"


def add_commands(msub) -> None:
    """Add the worker subcommands to `llmserve models`."""
    load = _worker_args(msub.add_parser("load", help="load a model on a running worker"))
    load.add_argument("ref", help="built-in name, model directory, or registry ref (name[@vN|@alias])")
    load.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the load")
    load.set_defaults(func=lambda a: _call(_load, a))

    unload = _worker_args(msub.add_parser("unload", help="unload a model from a running worker"))
    unload.add_argument("served_id", help="as `models loaded` shows it (e.g. smol@v2)")
    unload.add_argument("--force", action="store_true",
                        help="hand its requests to other workers now (they resume there) instead of waiting")
    unload.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for its requests")
    unload.set_defaults(func=lambda a: _call(_unload, a))

    loaded = _worker_args(msub.add_parser("loaded", help="the models a worker holds, with memory and load"))
    loaded.add_argument("--timeout", type=float, default=5.0)
    loaded.set_defaults(func=lambda a: _call(_loaded, a))


def _worker_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--worker", default=DEFAULT_WORKER, help="the worker's gRPC address (host:port)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _call(fn, args) -> int:
    import grpc

    from llmserve.worker.v1 import worker_pb2_grpc

    from .internal_creds import operator_auth

    with operator_auth().channel(args.worker) as channel:
        try:
            return fn(worker_pb2_grpc.WorkerServiceStub(channel), args)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _load(stub, args) -> int:
    from llmserve.worker.v1 import worker_pb2

    r = stub.LoadModel(worker_pb2.LoadModelRequest(ref=args.ref), timeout=args.timeout)
    data = {"served_id": r.served_id, "memory_bytes": r.memory_bytes, "already_loaded": r.already_loaded}
    verb = "already loaded" if r.already_loaded else "loaded"
    _emit(args, data, f"{verb} {r.served_id} on {args.worker} ({_mib(r.memory_bytes)})")
    return 0


def _unload(stub, args) -> int:
    from llmserve.worker.v1 import worker_pb2

    r = stub.UnloadModel(worker_pb2.UnloadModelRequest(served_id=args.served_id, force=args.force),
                         timeout=args.timeout)  # fmt: skip
    data = {"served_id": r.served_id, "freed_bytes": r.freed_bytes, "handed_off": r.handed_off,
            "cancelled": r.cancelled}  # fmt: skip
    moved = f", {r.handed_off} requests handed to other workers" if r.handed_off else ""
    moved += f", {r.cancelled} requests ended" if r.cancelled else ""
    _emit(args, data, f"unloaded {r.served_id} from {args.worker} (freed {_mib(r.freed_bytes)}{moved})")
    return 0


def _loaded(stub, args) -> int:
    from llmserve.worker.v1 import worker_pb2

    from .tables import table

    r = stub.ListModels(worker_pb2.ListModelsRequest(), timeout=args.timeout)
    rows = [[m.served_id, "serving" if m.serving else "unloading", _mib(m.memory_bytes),
             f"{m.total_kv_blocks - m.free_kv_blocks}/{m.total_kv_blocks}", m.running, m.waiting, m.ref]
            for m in r.models] + [[s, "loading", "", "", "", "", ""] for s in r.loading]  # fmt: skip
    data = {"models": [_model_dict(m) for m in r.models], "loading": list(r.loading),
            "memory_budget_bytes": r.memory_budget_bytes, "memory_used_bytes": r.memory_used_bytes}  # fmt: skip
    text = table(["model", "state", "memory", "kv used", "running", "waiting", "ref"], rows)
    text += f"\nmemory: {_mib(r.memory_used_bytes)} of {_mib(r.memory_budget_bytes)}"
    _emit(args, data, text)
    return 0


def _model_dict(m) -> dict:
    return {"served_id": m.served_id, "ref": m.ref, "serving": m.serving, "memory_bytes": m.memory_bytes,
            "total_kv_blocks": m.total_kv_blocks, "free_kv_blocks": m.free_kv_blocks,
            "running": m.running, "waiting": m.waiting}  # fmt: skip


def _emit(args, data, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)
