"""The one catalogue of metric instruments every llmserve service records.

Services record through the OpenTelemetry API (`opentelemetry.metrics.get_meter`); the meter
provider that `telemetry.configure_telemetry` installs exports them over OTLP/gRPC to the
monitor, which keeps rolling windows and re-exposes them to Prometheus (dots become
underscores, seconds get `_seconds`, counters `_total`). The monitor's alert rules and
dashboards refer to the names below, so a name changes only together with them.

| instrument                       | kind          | unit      | labels                     | recorded by |
|----------------------------------|---------------|-----------|----------------------------|-------------|
| llmserve.requests                | counter       | request   | model, tenant, status      | gateway     |
| llmserve.requests.active         | up-down       | request   | model, tenant              | gateway     |
| llmserve.ttft                    | histogram     | s         | model, tenant              | gateway     |
| llmserve.inter_token_latency     | histogram     | s         | model                      | gateway     |
| llmserve.e2e_latency             | histogram     | s         | model, tenant, status      | gateway     |
| llmserve.tokens.in / .out        | counter       | token     | model, tenant              | gateway     |
| llmserve.ratelimit.rejections    | counter       | request   | tenant, limit              | gateway     |
| llmserve.ratelimit.fail_open     | counter       | request   | tenant                     | gateway     |
| llmserve.ratelimit.sender_deaths | counter       | batch     | error                      | gateway     |
| llmserve.ratelimit.revoked       | counter       | request   | tenant                     | gateway     |
| llmserve.queue.depth             | gauge         | request   | model, priority            | scheduler   |
| llmserve.queue.wait              | histogram     | s         | model, priority            | scheduler   |
| llmserve.workers                 | gauge         | worker    | model, state               | scheduler (and the monitor, from the registry) |
| llmserve.batch.size              | histogram     | sequence  | model, worker              | worker      |
| llmserve.batch.tokens            | histogram     | token     | model, worker              | worker      |
| llmserve.step.duration           | histogram     | s         | model, worker              | worker      |
| llmserve.step.phase.duration     | histogram     | s         | model, worker, phase       | worker      |
| llmserve.engine.tokens           | counter       | token     | model, worker, phase       | worker      |
| llmserve.engine.sequences        | gauge         | sequence  | model, worker, state, priority | worker  |
| llmserve.kv.blocks.used / .free  | gauge         | block     | model, worker              | worker      |
| llmserve.kv.prefix_hits          | counter       | token     | model, worker              | worker      |
| llmserve.kv.prompt_tokens        | counter       | token     | model, worker              | worker (prefix_hits / this: the prefix-cache hit rate) |
| llmserve.preemptions             | counter       | sequence  | model, worker              | worker      |
| llmserve.background_task.failures | counter      | failure   | service, task              | every service (`supervise.Supervisor`) |
| llmserve.process.cpu.utilization | observable    | 1         | (resource: service)        | every service |
| llmserve.process.memory.rss      | observable    | By        | (resource: service)        | every service |
| llmserve.gpu.utilization / .memory.used / .power | observable | 1 / By / W | gpu          | worker (NVIDIA GPU only) |

`status` is the lower-case gRPC status name (`ok`, `cancelled`, `unavailable`, ...; see
`status_label`). Latency histograms use `LATENCY_BUCKETS`, whose bounds grow by 10% a step,
so a percentile read from buckets is within 10% of the true value from 0.5 ms to 2 min.
"""

from __future__ import annotations

import contextlib
import os
import threading

import grpc
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation

METER_NAME = "llmserve"


def _geometric(lo: float, hi: float, ratio: float) -> tuple[float, ...]:
    bounds, b = [], lo
    while b < hi * ratio:
        bounds.append(float(f"{b:.4g}"))
        b *= ratio
    return tuple(bounds)


#: Latency bucket bounds (seconds): 0.5 ms .. ~2 min, each 10% above the previous.
LATENCY_BUCKETS = _geometric(0.0005, 120.0, 1.1)
#: Batch-size bucket bounds (sequences per engine step).
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
#: Tokens-per-step bucket bounds (a step's whole token budget: prefill chunks plus decodes).
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
#: Priority classes (llmserve.gateway.v1.Priority LOW, NORMAL, HIGH), always exported.
PRIORITY_CLASSES = (1, 2, 3)
#: The `phase` of `llmserve.engine.tokens`: first-time prompt KV, generated tokens' KV, and
#: KV computed again after a preemption.
ENGINE_PHASES = ("prefill", "decode", "recompute")

#: Server-side failures: what the error-rate alert counts (client mistakes and cancels are not).
SERVER_ERROR_STATUSES = ("internal", "unavailable", "aborted", "deadline_exceeded", "unknown", "data_loss")


def status_label(code: grpc.StatusCode | str | None) -> str:
    """The `status` label value for a gRPC status code (None means OK)."""
    if code is None:
        return "ok"
    if isinstance(code, grpc.StatusCode):
        return code.name.lower()
    return str(code).lower()


def _meter(meter: Meter | None) -> Meter:
    return meter or metrics.get_meter(METER_NAME)


def _latency(meter: Meter, name: str, description: str):
    return meter.create_histogram(
        name, unit="s", description=description, explicit_bucket_boundaries_advisory=LATENCY_BUCKETS
    )


class GatewayMetrics:
    """What the gateway records for every request it admits, streams and finishes."""

    def __init__(self, meter: Meter | None = None):
        m = _meter(meter)
        self.requests = m.create_counter("llmserve.requests", "{request}", "Requests finished, by status.")
        self.active = m.create_up_down_counter(
            "llmserve.requests.active", "{request}", "Requests admitted and not yet finished."
        )
        self.ttft = _latency(m, "llmserve.ttft", "Time from admission to the first token sent.")
        self.itl = _latency(m, "llmserve.inter_token_latency", "Time between tokens of one request.")
        self.e2e = _latency(m, "llmserve.e2e_latency", "Time from admission to the last message sent.")
        self.tokens_in = m.create_counter("llmserve.tokens.in", "{token}", "Prompt tokens admitted.")
        self.tokens_out = m.create_counter("llmserve.tokens.out", "{token}", "Tokens delivered to clients.")
        self.rejections = m.create_counter(
            "llmserve.ratelimit.rejections", "{request}", "Requests refused by a tenant limit."
        )
        self.fail_open = m.create_counter(
            "llmserve.ratelimit.fail_open", "{request}", "Requests admitted without a limiter verdict."
        )
        self.sender_deaths = m.create_counter(
            "llmserve.ratelimit.sender_deaths", "{batch}", "Limiter batch senders that raised or were cancelled."
        )
        self.revoked = m.create_counter(
            "llmserve.ratelimit.revoked", "{request}", "Admissions undone because their caller never got them."
        )
        # Exported at 0 from the start: a counter that appears only on its first increase
        # leaves rate() panels and absent()-free alert rules with no data on a healthy system.
        self.rejections.add(0, {"tenant": "", "limit": "admission"})
        self.fail_open.add(0, {"tenant": ""})

    def request_started(self, model: str, tenant: str, prompt_tokens: int) -> None:
        """A request passed auth, limits and validation and was enqueued."""
        attrs = {"model": model, "tenant": tenant}
        self.active.add(1, attrs)
        self.tokens_in.add(prompt_tokens, attrs)

    def first_token(self, model: str, tenant: str, ttft_s: float) -> None:
        """The first token of a request went to the client, `ttft_s` after admission."""
        self.ttft.record(ttft_s, {"model": model, "tenant": tenant})

    def tokens_delivered(self, model: str, tenant: str, count: int, gap_s: float | None) -> None:
        """`count` tokens went to the client; `gap_s` since the previous delivery (None: first).

        A chunk of k tokens counts k inter-token gaps of gap_s / k each, so the percentiles
        describe tokens, not chunks.
        """
        if count <= 0:
            return
        self.tokens_out.add(count, {"model": model, "tenant": tenant})
        if gap_s is not None:
            for _ in range(count):
                self.itl.record(gap_s / count, {"model": model})

    def request_finished(self, model: str, tenant: str, status: str, e2e_s: float) -> None:
        """A request ended (any outcome); `status` from `status_label`."""
        self.active.add(-1, {"model": model, "tenant": tenant})
        attrs = {"model": model, "tenant": tenant, "status": status}
        self.requests.add(1, attrs)
        self.e2e.record(e2e_s, attrs)

    def request_refused(self, model: str, status: str) -> None:
        """A request was refused at admission (auth, validation, limits): it never started,
        so it is counted by status but never entered the active gauge."""
        attrs = {"model": model, "tenant": "", "status": status}
        self.requests.add(1, attrs)
        self.e2e.record(0.0, attrs)

    def rate_limited(self, tenant: str, limit: str) -> None:
        """A request was refused by `limit` (requests, tokens or streams)."""
        self.rejections.add(1, {"tenant": tenant, "limit": limit})

    def limiter_failed_open(self, tenant: str) -> None:
        """The limiter could not reach Redis and admitted the request under its local bound."""
        self.fail_open.add(1, {"tenant": tenant})

    def limiter_sender_died(self, error: str) -> None:
        """A limiter batch sender raised or was cancelled; its calls were failed, the sender went on."""
        self.sender_deaths.add(1, {"error": error})

    def limiter_revoked(self, tenant: str, count: int) -> None:
        """`count` admissions Redis granted after their callers had given up were undone."""
        self.revoked.add(count, {"tenant": tenant})


class _LastValues:
    """Sets a gauge only when its value changed. The SDK reads a synchronous gauge with
    cumulative temporality (the Prometheus reader, and the OTLP exporter whatever its
    temporality preference: that only concerns counters and histograms), which reports the
    last value at every collection, so setting it again to the same value records nothing.
    Each set costs several microseconds of SDK work; the worker sets eight after every step."""

    def __init__(self) -> None:
        self._last: dict[tuple, int | float] = {}
        self._lock = threading.Lock()  # the engine thread and the heartbeat both set KV gauges

    def set(self, gauge, value: int | float, key: tuple, attrs: dict[str, str]) -> None:
        with self._lock:
            if self._last.get(key) == value:
                return
            self._last[key] = value
            gauge.set(value, attrs)


class SchedulerMetrics:
    """What a scheduler records about queues, dispatch and the workers it sees."""

    def __init__(self, meter: Meter | None = None):
        m = _meter(meter)
        self.depth = m.create_gauge("llmserve.queue.depth", "{request}", "Requests waiting for a worker.")
        self.wait = _latency(m, "llmserve.queue.wait", "Time from enqueue to dispatch on a worker.")
        self.workers = m.create_gauge("llmserve.workers", "{worker}", "Workers in the registry, by state.")
        self._gauges = _LastValues()  # set on every registry refresh (10 a second), rarely changed

    def set_queue_depth(self, model: str, priority: int | str, depth: int) -> None:
        """Requests of `model` at `priority` waiting now (stream backlog plus held here)."""
        self._gauges.set(self.depth, depth, ("depth", model, str(priority)), {"model": model, "priority": str(priority)})

    def dispatched(self, model: str, priority: int | str, waited_s: float) -> None:
        """A request was handed to a worker after waiting `waited_s` since the gateway enqueued it."""
        self.wait.record(waited_s, {"model": model, "priority": str(priority)})

    def set_workers(self, live_by_model: dict[str, int], live: int, draining: int = 0) -> None:
        """Workers with a fresh heartbeat: in all (no model label) and per model served.

        Totals carry no `model` attribute, so a worker serving two models counts once.
        """
        self._gauges.set(self.workers, live, ("live",), {"state": "live"})
        self._gauges.set(self.workers, draining, ("draining",), {"state": "draining"})
        for model, count in live_by_model.items():
            self._gauges.set(self.workers, count, ("live", model), {"model": model, "state": "live"})


class WorkerMetrics:
    """What a worker records per engine step and about its KV cache."""

    def __init__(self, worker_id: str, meter: Meter | None = None):
        m = _meter(meter)
        self.worker_id = worker_id
        self._gauges = _LastValues()
        self._attrs_of: dict[str, dict[str, str]] = {}
        self._extra_attrs: dict[tuple, dict[str, str]] = {}
        self._priorities: set[int] = set(PRIORITY_CLASSES)
        self.batch = m.create_histogram(
            "llmserve.batch.size",
            "{sequence}",
            "Sequences in one engine step.",
            explicit_bucket_boundaries_advisory=BATCH_BUCKETS,
        )
        self.batch_tokens = m.create_histogram(
            "llmserve.batch.tokens", "{token}", "Tokens computed in one engine step (all phases).",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.step_time = _latency(m, "llmserve.step.duration", "Wall time of one engine step.")
        self.tokens = m.create_counter("llmserve.engine.tokens", "{token}", "Tokens computed, by phase.")
        self.kv_used = m.create_gauge("llmserve.kv.blocks.used", "{block}", "KV cache blocks in use.")
        self.kv_free = m.create_gauge("llmserve.kv.blocks.free", "{block}", "KV cache blocks free.")
        self.phase_time = _latency(m, "llmserve.step.phase.duration",
                                   "Time of one engine step phase (schedule, prepare, forward, sample, ...).")
        self.preempts = m.create_counter(
            "llmserve.preemptions", "{sequence}", "Sequences preempted because KV ran out."
        )
        self.prefix_hits = m.create_counter(
            "llmserve.kv.prefix_hits", "{token}", "Prompt tokens served from the prefix cache."
        )
        self.prompt_tokens = m.create_counter(
            "llmserve.kv.prompt_tokens", "{token}",
            "Prompt tokens of the requests the engine admitted (the prefix-cache hit rate's denominator).",
        )
        self.sequences = m.create_gauge(
            "llmserve.engine.sequences", "{sequence}", "Sequences in the engine, by state (running, waiting) and priority."
        )

    def _attrs(self, model: str) -> dict[str, str]:
        attrs = self._attrs_of.get(model)
        if attrs is None:
            attrs = self._attrs_of[model] = {"model": model, "worker": self.worker_id}
        return attrs

    def _with(self, model: str, *extra: tuple[str, str]) -> dict[str, str]:
        """The model's attributes plus `extra` (phase, state, ...), built once per combination."""
        key = (model, *extra)
        attrs = self._extra_attrs.get(key)
        if attrs is None:
            attrs = self._extra_attrs[key] = {**self._attrs(model), **dict(extra)}
        return attrs

    def model_started(self, model: str) -> None:
        """Export this model's counters at 0 now, so they have data before their first event."""
        attrs = self._attrs(model)
        self.preempts.add(0, attrs)
        self.prefix_hits.add(0, attrs)
        self.prompt_tokens.add(0, attrs)
        for phase in ENGINE_PHASES:
            self.tokens.add(0, {**attrs, "phase": phase})

    def step(self, model: str, batch_size: int, prefill_tokens: int, decode_tokens: int, seconds: float,
             recompute_tokens: int = 0) -> None:
        """One engine step ran `batch_size` scheduled sequences in `seconds`, computing KV for
        that many tokens per phase (see `ENGINE_PHASES`)."""
        attrs = self._attrs(model)
        self.step_time.record(seconds, attrs)
        if batch_size <= 0:
            return  # a step that ran nothing (only preempted) is no batch
        self.batch.record(batch_size, attrs)
        self.batch_tokens.record(prefill_tokens + decode_tokens + recompute_tokens, attrs)
        for phase, count in zip(ENGINE_PHASES, (prefill_tokens, decode_tokens, recompute_tokens), strict=True):
            if count:
                self.tokens.add(count, self._with(model, ("phase", phase)))

    def step_phases(self, model: str, seconds_by_phase: dict[str, float]) -> None:
        """The per-phase breakdown of one step, so the next optimization starts from evidence.
        `num_tokens` (a count the engine's timer keeps beside its phases) is not a duration."""
        for phase, seconds in seconds_by_phase.items():
            if phase != "num_tokens":
                self.phase_time.record(seconds, self._with(model, ("phase", phase)))

    def set_kv_blocks(self, model: str, used: int, free: int) -> None:
        """KV accounting after a step (or a heartbeat)."""
        self._gauges.set(self.kv_used, used, ("kv_used", model), self._attrs(model))
        self._gauges.set(self.kv_free, free, ("kv_free", model), self._attrs(model))

    def preempted(self, model: str, count: int = 1) -> None:
        """`count` sequences were preempted (recompute) to free KV blocks."""
        self.preempts.add(count, self._attrs(model))

    def prefix_hit(self, model: str, tokens: int, prompt_tokens: int = 0) -> None:
        """`tokens` prompt tokens were taken from the prefix cache instead of computed, out of
        `prompt_tokens` admitted."""
        if tokens:
            self.prefix_hits.add(tokens, self._attrs(model))
        if prompt_tokens:
            self.prompt_tokens.add(prompt_tokens, self._attrs(model))

    def set_sequences(self, model: str, counts: dict[tuple[str, int], int]) -> None:
        """Sequences in the engine after a step by (state, priority): in the batch, and waiting
        (preempted or not yet scheduled). Every priority class is set, 0 included, so a class
        that empties reads 0 rather than its last value."""
        self._priorities.update(p for _, p in counts)  # once seen, a class is set (to 0) ever after
        for state in ("running", "waiting"):
            for priority in sorted(self._priorities):
                attrs = self._with(model, ("state", state), ("priority", str(priority)))
                self._gauges.set(self.sequences, counts.get((state, priority), 0), ("sequences", id(attrs)), attrs)


_process_installed = False


def install_process_metrics(meter: Meter | None = None) -> None:
    """Observable CPU and memory of this process, and NVIDIA GPU gauges when a GPU is present.

    Called once per process (the entrypoint is the natural place); later calls do nothing.
    """
    global _process_installed
    if _process_installed:
        return
    _process_installed = True
    import psutil

    m = _meter(meter)
    proc = psutil.Process(os.getpid())
    proc.cpu_percent(None)  # the first reading is meaningless; prime it

    def cpu(_: CallbackOptions):
        yield Observation(proc.cpu_percent(None) / 100.0)

    def rss(_: CallbackOptions):
        yield Observation(proc.memory_info().rss)

    m.create_observable_gauge("llmserve.process.cpu.utilization", [cpu], "1", "CPU use, in cores.")
    m.create_observable_gauge("llmserve.process.memory.rss", [rss], "By", "Resident memory.")
    install_gpu_metrics(m)


def install_gpu_metrics(m: Meter) -> None:
    """NVIDIA GPU gauges (utilization, memory, power) per GPU, read through NVML (nvidia-ml-py,
    the `gpu` extra); nothing when the package, the driver or a GPU is missing."""
    try:
        import pynvml  # nvidia-ml-py; optional

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no package, no driver or no GPU: no GPU metrics
        return
    if not handles:
        return

    def observe(read):
        def callback(_: CallbackOptions):
            for index, handle in enumerate(handles):
                with contextlib.suppress(Exception):  # a GPU that stops answering skips a reading
                    yield Observation(read(handle), {"gpu": str(index)})

        return [callback]

    m.create_observable_gauge(
        "llmserve.gpu.utilization",
        observe(lambda h: pynvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0),
        "1",
        "GPU busy fraction.",
    )
    m.create_observable_gauge(
        "llmserve.gpu.memory.used",
        observe(lambda h: pynvml.nvmlDeviceGetMemoryInfo(h).used),
        "By",
        "GPU memory in use.",
    )
    m.create_observable_gauge(
        "llmserve.gpu.power",
        observe(lambda h: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
        "W",
        "GPU power draw.",
    )
