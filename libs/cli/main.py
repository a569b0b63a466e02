"""`llmserve`: run the local suite and talk to it."""

from __future__ import annotations

import argparse
import os
import sys
import time

from llmserve.common.model_store import DEFAULT_MODEL

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEV_KEY = "llmserve-dev-key"


def _client(args):
    from llmserve.client import Client

    return Client(args.address, api_key=args.api_key)


def cmd_up(args) -> int:
    from .up import run_up

    return run_up(args)


def cmd_chat(args) -> int:
    import grpc

    params = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}
    try:
        with _client(args) as client:
            last = None
            for piece in client.stream(args.model, messages=[{"role": "user", "content": args.message}], **params):
                sys.stdout.write(piece.text)
                sys.stdout.flush()
                last = piece
            print()
            if last and args.verbose:
                print(f"[{last.finish_reason}; {last.prompt_tokens} prompt + {last.completion_tokens} "
                      "completion tokens]", file=sys.stderr)
    except grpc.RpcError as e:
        print(f"\nerror: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return 0


def cmd_generate(args) -> int:
    import grpc

    try:
        with _client(args) as client:
            result = client.generate(args.model, args.prompt, max_tokens=args.max_tokens,
                                     temperature=args.temperature, seed=args.seed)
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(result.text)
    return 0


def cmd_prepare(args) -> int:
    from llmserve.common.model_store import resolve_model

    started = time.monotonic()
    path = resolve_model(args.model)
    print(f"{args.model}: {path} ({time.monotonic() - started:.1f}s)")
    return 0


def _add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get("LLMSERVE_ADDRESS", DEFAULT_ADDRESS))
    p.add_argument("--api-key", default=os.environ.get("LLMSERVE_API_KEY", DEV_KEY))
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the local suite (Redis, gateway, scheduler, worker, monitor)")
    up.add_argument("--workers", type=int, default=1, help="number of workers")
    up.add_argument("--no-monitor", action="store_true")
    up.add_argument("--free-ports", action="store_true",
                    help="pick free ports (and a private Redis port) instead of the defaults")
    up.set_defaults(func=cmd_up)

    chat = sub.add_parser("chat", help="stream a chat answer to the terminal")
    chat.add_argument("message")
    chat.add_argument("-v", "--verbose", action="store_true", help="print finish reason and usage")
    _add_client_args(chat)
    chat.set_defaults(func=cmd_chat)

    gen = sub.add_parser("generate", help="complete a raw prompt")
    gen.add_argument("prompt")
    _add_client_args(gen)
    gen.set_defaults(func=cmd_generate)

    prep = sub.add_parser("prepare", help="convert and cache a model (once)")
    prep.add_argument("--model", default=DEFAULT_MODEL)
    prep.set_defaults(func=cmd_prepare)
    _register_command_modules(sub)
    return parser


# Subcommands kept in their own modules, each with `register(sub, add_client_args)`:
# status/batch/bench (ops_commands), and `keys` and `models` once their modules exist.
COMMAND_MODULES = ("ops_commands", "keys", "models", "internal_creds")


def _register_command_modules(sub) -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"llmserve.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"llmserve.cli.{name}":
                raise
            continue
        if hasattr(module, "register"):
            module.register(sub, _add_client_args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
