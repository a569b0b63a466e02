"""The Redis data model, in one place. Every key llmserve writes is named here.

| key                                  | type   | written by | purpose |
|--------------------------------------|--------|-----------|---------|
| llmserve:requests:{model}            | stream | gateway   | requests waiting for a scheduler (group `schedulers`) |
| llmserve:worker:{worker_id}          | stream | scheduler | requests placed on one worker (group `worker`) |
| llmserve:workers                     | set    | worker    | ids of registered workers (live or dead) |
| llmserve:heartbeat:{worker_id}       | string | worker    | JSON load report, expires after the heartbeat TTL |
| llmserve:request:{request_id}        | hash   | all       | idempotency and whereabouts: gateway, state, worker, attempt |
| llmserve:cancel:{request_id}         | string | gateway   | cancellation marker, seen by scheduler and worker |
| llmserve:deadletter                  | stream | scheduler | requests that failed too many attempts |
"""

from __future__ import annotations

PREFIX = "llmserve"
SCHEDULER_GROUP = "schedulers"
WORKER_GROUP = "worker"
WORKERS_SET = f"{PREFIX}:workers"
DEADLETTER_STREAM = f"{PREFIX}:deadletter"
PAYLOAD_FIELD = "data"  # stream entries carry one field: a serialized llmserve.common.v1.WorkItem


def request_stream(model: str) -> str:
    return f"{PREFIX}:requests:{model}"


def worker_stream(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def heartbeat_key(worker_id: str) -> str:
    return f"{PREFIX}:heartbeat:{worker_id}"


def request_key(request_id: str) -> str:
    return f"{PREFIX}:request:{request_id}"


def cancel_key(request_id: str) -> str:
    return f"{PREFIX}:cancel:{request_id}"
