"""`llmserve keys create|list|revoke`: API keys in Redis (only their SHA-256 digests are stored).

The raw key is printed once by `create` and cannot be shown again. Gateways stop accepting
a revoked key within `LLMSERVE_GATEWAY_API_KEY_CACHE_S` (2 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from llmserve.common import redis_client
from llmserve.common.api_keys import ApiKeyStore, KeyRecord
from llmserve.common.settings import DEFAULT_REDIS_URL


async def _with_store(redis_url: str, work):
    r = redis_client.connect(redis_url, socket_timeout=None)
    try:
        return await work(ApiKeyStore(r))
    finally:
        await r.aclose()


def create_key(
    redis_url: str,
    tenant: str,
    models: list[str] | None = None,
    name: str = "",
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    max_concurrent_streams: int | None = None,
) -> tuple[KeyRecord, str]:
    """Store a new key for `tenant`; returns (record, raw key). Unset limits use the gateway's defaults."""
    limits = {
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
        "max_concurrent_streams": max_concurrent_streams,
    }
    return asyncio.run(_with_store(redis_url, lambda s: s.create(tenant, models, limits, name)))


def list_keys(redis_url: str) -> list[KeyRecord]:
    """Every stored key's record (without digests when shown with `.public()`)."""
    return asyncio.run(_with_store(redis_url, lambda s: s.list()))


def revoke_key(redis_url: str, key_id: str) -> bool:
    """Delete a key by its id; False when there was no such key."""
    return asyncio.run(_with_store(redis_url, lambda s: s.revoke(key_id)))


def add_parser(subparsers) -> None:
    """Add `keys create|list|revoke` to the `llmserve` argument parser."""
    keys = subparsers.add_parser("keys", help="create, list and revoke API keys")
    keys.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    sub = keys.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="create a key (printed once)")
    create.add_argument("tenant")
    create.add_argument(
        "--model", action="append", dest="models", help="allowed model (repeat); default: all"
    )
    create.add_argument("--name", default="")
    for limit in ("requests-per-minute", "tokens-per-minute", "max-concurrent-streams"):
        create.add_argument(f"--{limit}", type=int, default=None)
    sub.add_parser("list", help="list keys (never the keys themselves)")
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    keys.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    """Run the parsed `keys` subcommand; returns the exit status."""
    if args.keys_command == "create":
        record, raw = create_key(
            args.redis_url,
            args.tenant,
            args.models,
            args.name,
            args.requests_per_minute,
            args.tokens_per_minute,
            args.max_concurrent_streams,
        )
        print(raw)
        print(
            f"key id {record.key_id} for tenant {record.tenant}; this key is shown only once", file=sys.stderr
        )
        return 0
    if args.keys_command == "list":
        for record in list_keys(args.redis_url):
            print(json.dumps(record.public()))
        return 0
    if revoke_key(args.redis_url, args.key_id):
        print(f"revoked {args.key_id}")
        return 0
    print(f"no key {args.key_id}", file=sys.stderr)
    return 1


def register(subparsers, _add_client_args=None) -> None:
    """Hook for `llmserve.cli.main`'s command modules."""
    add_parser(subparsers)
