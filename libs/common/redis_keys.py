"""The Redis data model, in one place. Every key llmserve writes is named here.

| key                                  | type   | written by | purpose |
|--------------------------------------|--------|-----------|---------|
| llmserve:requests:{model}            | stream | gateway   | requests waiting for a scheduler (group `schedulers`) |
| llmserve:worker:{worker_id}          | stream | scheduler | requests placed on one worker (group `worker`) |
| llmserve:workers                     | set    | worker    | ids of registered workers (live or dead) |
| llmserve:heartbeat:{worker_id}       | string | worker    | JSON load report, expires after the heartbeat TTL |
| llmserve:request:{request_id}        | hash   | all       | idempotency and whereabouts: gateway, state, worker, attempt, tenant, lease |
| llmserve:result:{request_id}         | string | worker    | a finished request's chunks (StoredResult), for re-attach; expires |
| llmserve:gateway:{address}           | string | gateway   | a live gateway's token sink address; expires unless renewed |
| llmserve:cancel:{request_id}         | string | gateway   | cancellation marker, seen by scheduler and worker |
| llmserve:deadletter                  | stream | scheduler | requests that failed too many attempts |
| llmserve:recovering:{worker_id}      | string | scheduler | lock: one scheduler recovers a dead worker |
| llmserve:fair:{model}:{priority}     | hash   | scheduler, worker | fair-share virtual clock shared by scheduler replicas (fair_share.py) |
| llmserve:schedulers                 | set    | scheduler | ids of scheduler replicas that published a tenant window |
| llmserve:scheduler_stats:{id}        | string | scheduler | JSON per-tenant dispatch window of one replica, expires (tenant_window.py) |
| llmserve:apikey:{key_id}             | hash   | CLI       | stored API key: SHA-256 of the secret, tenant, models, limits |
| llmserve:apikeys                     | set    | CLI       | ids of stored API keys |
| llmserve:ratelimit:{tenant}:window   | zset   | gateway   | admissions in the sliding minute (requests per minute) |
| llmserve:ratelimit:{tenant}:tokens   | zset   | gateway   | tokens reserved in the sliding minute |
| llmserve:ratelimit:{tenant}:streams  | zset   | gateway   | concurrent stream leases with expiry |
| llmserve:model:{name}:events         | list   | CLI, monitor | traffic-split changes (automatic rollbacks), newest first |
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


def result_key(request_id: str) -> str:
    return f"{PREFIX}:result:{request_id}"


def gateway_key(address: str) -> str:
    return f"{PREFIX}:gateway:{address}"


def fair_key(model: str, priority: int) -> str:
    return f"{PREFIX}:fair:{model}:{priority}"


SCHEDULERS_SET = f"{PREFIX}:schedulers"


def scheduler_stats_key(scheduler_id: str) -> str:
    return f"{PREFIX}:scheduler_stats:{scheduler_id}"


MODELS_SET = f"{PREFIX}:models"


def _model_prefix(name: str) -> str:
    # Literal braces: a Cluster hash tag keeps one model's registry keys in one slot.
    return f"{PREFIX}:model:{{{name}}}"


def model_versions_key(name: str) -> str:
    return f"{_model_prefix(name)}:versions"


def model_seq_key(name: str) -> str:
    return f"{_model_prefix(name)}:seq"


def model_aliases_key(name: str) -> str:
    return f"{_model_prefix(name)}:aliases"


def model_history_key(name: str, alias: str) -> str:
    return f"{_model_prefix(name)}:history:{alias}"


def model_events_key(name: str) -> str:
    return f"{_model_prefix(name)}:events"
