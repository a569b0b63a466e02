"""Which roles may call each internal RPC: the one table, reviewed in one place.

A method absent from its service's table is refused to every role (see internal_auth), so a
new RPC is closed until someone decides who may call it here; tests/integration/security walk
every method of every internal proto against these tables.
"""

from __future__ import annotations

from .internal_auth import Policy

_SERVICES = frozenset({"worker", "scheduler", "gateway", "monitor"})
_OPERATOR = frozenset({"operator"})
_ANY = _SERVICES | _OPERATOR

_SINK = "/llmserve.common.tokensink.v1.TokenSinkService/"
#: The gateway's token sink. Workers stream tokens of requests placed on them and fence them
#: on a forced unload; schedulers send final errors and fence for recovery. The servicer
#: checks which request each worker may touch (see gateway sink authorisation).
TOKEN_SINK: Policy = {
    _SINK + "StreamTokens": frozenset({"worker", "scheduler"}),
    _SINK + "Fence": frozenset({"worker", "scheduler"}),
}

_SCHED = "/llmserve.scheduler.v1.SchedulerService/"
SCHEDULER: Policy = {
    _SCHED + "GetQueueStats": frozenset({"operator", "gateway", "monitor"}),
}

_WORKER = "/llmserve.worker.v1.WorkerService/"
#: Reading a worker's state is for operators and the services that place and watch work;
#: everything that changes it (models, profiles, cancelling) is the operator's, but for
#: gateways cancelling and re-attaching their clients' requests.
WORKER: Policy = {
    _WORKER + "GetStatus": frozenset({"operator", "scheduler", "monitor"}),
    _WORKER + "ListModels": frozenset({"operator", "scheduler", "monitor"}),
    _WORKER + "CancelRequest": frozenset({"operator", "gateway", "scheduler"}),
    # A gateway a client re-attached through moves the request's token stream to itself (the
    # gateway checked the tenant).
    _WORKER + "Reattach": frozenset({"gateway"}),
    _WORKER + "StartProfile": _OPERATOR,
    _WORKER + "LoadModel": _OPERATOR,
    _WORKER + "UnloadModel": _OPERATOR,
}

_MON = "/llmserve.monitor.v1.MonitorService/"
_READERS = frozenset({"operator", "gateway", "scheduler"})
#: Monitor reads for operators and services; silencing alerts only for operators; OTLP
#: export from every service (an operator's tools too), never from an unauthenticated peer.
MONITOR: Policy = {
    _MON + "GetSummary": _READERS,
    _MON + "ListAlerts": _READERS,
    _MON + "WatchAlerts": _READERS,
    _MON + "GetTrace": _READERS,
    _MON + "ListSilences": _READERS,
    _MON + "CreateSilence": _OPERATOR,
    _MON + "DeleteSilence": _OPERATOR,
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export": _ANY,
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export": _ANY,
}
