"""The CLI's internal credential (operator role) and `llmserve internal-token`.

Admin commands (`llmserve models worker ...`, `llmserve status`) call internal ports, which need a service
credential: LLMSERVE_INTERNAL_TOKEN (an operator token), or LLMSERVE_INTERNAL_SECRET (the
master; an operator token is derived from it), or mutual-TLS files (LLMSERVE_INTERNAL_TLS_*).
Without any, the token `llmserve up` wrote for this checkout (.run/operator.token) is used.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from llmserve.common.internal_auth import ROLES, InternalAuth, InternalAuthError, mint_token
from llmserve.common.settings import InternalAuthSettings

#: Written by `llmserve up` (mode 0600): an operator token of the running local suite.
RUN_TOKEN_FILE = Path(".run/operator.token")


def operator_auth() -> InternalAuth:
    """This user's operator credential, from the environment or the local suite's file."""
    settings = InternalAuthSettings()
    auth = InternalAuth.from_settings(settings, "operator", _user())
    if not auth.enabled and auth.token is None and RUN_TOKEN_FILE.is_file():
        return InternalAuth(token=RUN_TOKEN_FILE.read_text().strip())
    return auth


def _user() -> str:
    try:
        return getpass.getuser() or "cli"
    except (KeyError, OSError):
        return "cli"


def cmd_internal_token(args) -> int:
    secret = InternalAuthSettings().internal_secret.get_secret_value()
    if not secret:
        print("error: set LLMSERVE_INTERNAL_SECRET (the master secret) to derive a token", file=sys.stderr)
        return 2
    try:
        print(mint_token(secret, args.role, args.id))
    except InternalAuthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def register(sub, add_client_args) -> None:
    p = sub.add_parser("internal-token", help="derive one identity's internal token from LLMSERVE_INTERNAL_SECRET")
    p.add_argument("role", choices=sorted(ROLES))
    p.add_argument("id", help="the identity, e.g. a worker id (LLMSERVE_WORKER_WORKER_ID)")
    p.set_defaults(func=cmd_internal_token)



