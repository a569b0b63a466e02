"""gRPC adapters: protobuf <-> the gateway's domain. No logic beyond conversion."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import grpc

from llmserve.common.errors import InvalidArgument, Unavailable
from llmserve.common.internal_auth import current_caller
from llmserve.common.logging import get_logger
from llmserve.common.structured import from_public_pb
from llmserve.common.tokensink.v1 import token_sink_pb2, token_sink_pb2_grpc
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc

from .admission.auth import single_authorization
from .admission.validation import GenerateParams, Job
from .choices import admit_all, expand, merged
from .generation import GenerationService
from .routing.model_list import ModelStatus
from .streams.inflight import FinishEvent, InflightRegistry, TokenEvent
from .streams.reattach import chunk_from_pb
from .streams.sink_acks import OutboxItem, SinkResponses
from .streams.sink_authz import SinkAuthorizer
from .streams.sink_links import SinkLinks

log = get_logger(__name__)


def params_from_pb(request: pb.GenerateRequest) -> GenerateParams:
    which = request.WhichOneof("input")
    return GenerateParams(
        model=request.model,
        prompt=request.prompt if which == "prompt" else None,
        messages=[{"role": m.role, "content": m.content} for m in request.messages.messages]
        if which == "messages" else None,
        max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        temperature=request.temperature if request.HasField("temperature") else None,
        top_p=request.top_p if request.HasField("top_p") else None,
        top_k=request.top_k,
        repetition_penalty=request.repetition_penalty if request.HasField("repetition_penalty") else None,
        stop=list(request.stop),
        seed=request.seed if request.HasField("seed") else None,
        request_id=request.request_id,
        priority=int(request.priority),
        resume_from_index=request.resume_from_index if request.HasField("resume_from_index") else None,
        constraint=from_public_pb(request.structured_output) if request.HasField("structured_output") else None,
        presence_penalty=request.presence_penalty if request.HasField("presence_penalty") else None,
        frequency_penalty=request.frequency_penalty if request.HasField("frequency_penalty") else None,
        logit_bias=dict(request.logit_bias),
        min_p=request.min_p if request.HasField("min_p") else None,
        min_tokens=request.min_tokens,
        stop_token_ids=list(request.stop_token_ids),
        ignore_eos=request.ignore_eos,
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs,
        prompt_logprobs=request.prompt_logprobs,
    )


def prompts_from_pb(request: pb.GenerateRequest) -> list[str | list[int]] | None:
    """The prompt list (None unless the request's input is `prompts`)."""
    if request.WhichOneof("input") != "prompts":
        return None
    out: list[str | list[int]] = []
    for i, p in enumerate(request.prompts.prompts):
        kind = p.WhichOneof("kind")
        if kind == "text":
            out.append(p.text)
        elif kind == "token_ids" and p.token_ids.ids:
            out.append(list(p.token_ids.ids))
        else:
            raise InvalidArgument(f"prompts.prompts[{i}] needs text or token ids", param="prompts")
    if not out:
        raise InvalidArgument("prompts needs at least one prompt", param="prompts")
    return out


def _logprobs_pb(logprobs) -> list[pb.TokenLogprob]:
    return [pb.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob,
                            top_logprobs=[pb.TopLogprob(token_id=t, logprob=v) for t, v in lp.top])
            for lp in logprobs or ()]


def _finish_reason(event: FinishEvent) -> pb.FinishReason:
    # The public FinishReason names the completed outcomes alike (FINISH_REASON_STOP, ...).
    return pb.FinishReason.Value(f"FINISH_REASON_{event.reason.name}")


def _sum_usage(finishes: dict[int, FinishEvent], n: int) -> pb.Usage:
    """Each prompt's tokens once (its choice 0's), every choice's completion tokens."""
    prompt = sum(f.prompt_tokens for i, f in finishes.items() if i % n == 0)
    completion = sum(f.completion_tokens for f in finishes.values())
    return pb.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _usage(event: FinishEvent) -> pb.Usage:
    return pb.Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                    total_tokens=event.prompt_tokens + event.completion_tokens)


def _model_info(m: ModelStatus) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=m.name, context_length=m.context_length, ready_workers=m.ready_workers, worker_ids=m.worker_ids,
        registry=m.registry,
        aliases=[pb.ModelAlias(alias=a.alias, version=a.version, split=a.split) for a in m.aliases],
        versions=[pb.ModelVersionInfo(served_id=v.served_id, ready_workers=v.ready_workers, worker_ids=v.worker_ids)
                  for v in m.versions],
    )  # fmt: skip


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
    return single_authorization([v if isinstance(v, str) else v.decode(errors="replace") for v in values])


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, service: GenerationService):
        self.service = service

    # Domain errors raised here answer their table status through GrpcApp's one error path.
    async def GenerateStream(self, request, context):
        request_id, jobs = await self._jobs(request, context)
        async for i, event in merged(self.service, jobs, context.time_remaining()):
            if isinstance(event, TokenEvent):
                yield pb.GenerateStreamResponse(request_id=request_id, index=event.index, choice_index=i,
                                                token_ids=event.token_ids, text=event.text,
                                                logprobs=_logprobs_pb(event.logprobs),
                                                prompt_logprobs=_logprobs_pb(event.prompt_logprobs))
            else:
                yield pb.GenerateStreamResponse(request_id=request_id, index=event.completion_tokens, choice_index=i,
                                                finish_reason=_finish_reason(event), usage=_usage(event))

    async def Generate(self, request, context):
        request_id, jobs = await self._jobs(request, context)
        choices = [pb.Choice(index=i) for i in range(len(jobs))]
        parts: list[list[str]] = [[] for _ in jobs]
        finishes: dict[int, FinishEvent] = {}
        async for i, event in merged(self.service, jobs, context.time_remaining()):
            if isinstance(event, TokenEvent):
                parts[i].append(event.text)
                choices[i].logprobs.extend(_logprobs_pb(event.logprobs))
                choices[i].prompt_logprobs.extend(_logprobs_pb(event.prompt_logprobs))
            else:
                finishes[i] = event
                choices[i].finish_reason = _finish_reason(event)
                choices[i].usage.CopyFrom(_usage(event))
        for choice, texts in zip(choices, parts, strict=True):
            choice.text = "".join(texts)
        first = choices[0]
        return pb.GenerateResponse(request_id=request_id, model=jobs[0].model, text=first.text,
                                   finish_reason=first.finish_reason, usage=_sum_usage(finishes, request.n or 1),
                                   logprobs=first.logprobs, prompt_logprobs=first.prompt_logprobs, choices=choices)

    async def ListModels(self, request, context):
        identity = await self.service.identify(_authorization(context))
        models = await self.service.list_models()
        return pb.ListModelsResponse(models=[_model_info(m) for m in models if identity.may_see(m.name)])

    async def _jobs(self, request, context) -> tuple[str, list[Job]]:
        """The request id and one admitted job per choice (all or none are admitted)."""
        params, prompts, n = params_from_pb(request), prompts_from_pb(request), request.n or 1
        if params.resume_from_index is not None:
            if n != 1 or prompts is not None:
                raise InvalidArgument("resume_from_index re-attaches to one choice: send its request id "
                                      "(<request_id>.<index>) without n or prompts", param="resume_from_index")
            job = await self.service.admit(_authorization(context), params)
            return job.request_id, [job]
        params = dataclasses.replace(params, request_id=params.request_id or uuid.uuid4().hex)
        jobs = await admit_all(self.service, _authorization(context), expand(params, prompts, n))
        return params.request_id, jobs


class TokenSinkServicer(token_sink_pb2_grpc.TokenSinkServiceServicer):
    """Receives workers' token chunks; answers with cancellations for them and with
    acknowledgements of the messages it processed (see `SinkLinks`)."""

    def __init__(self, inflight: InflightRegistry, authz: SinkAuthorizer | None = None,
                 links: SinkLinks | None = None):
        self.inflight = inflight
        self.authz = authz
        self.links = links or SinkLinks()

    async def StreamTokens(self, request_iterator, context):
        # Items: a request id to cancel, an int seq to acknowledge, "" when the sender closed.
        # ...or an Unavailable that ends the stream.
        outbox: asyncio.Queue[OutboxItem] = asyncio.Queue()
        responses = SinkResponses(outbox)
        listeners: dict[str, asyncio.Queue[str]] = {}
        forwarders: list[asyncio.Task] = []
        caller = current_caller()
        checker = self.authz.stream_checker(caller) if self.authz else None
        link_scope = f"{caller.role}/{caller.id}" if caller else ""

        async def consume() -> None:
            try:
                async for message in request_iterator:
                    # A link's seqs are scoped by its authenticated sender: no caller can mark
                    # another's messages as already processed.
                    link = f"{link_scope}|{message.link_id}"
                    if self.links.is_new(link, message.seq):
                        # Every chunk is authorized before any is delivered: if Redis cannot say
                        # (Unavailable), the message stays unprocessed and unacknowledged, and the
                        # stream ends, so the sender resends it once it has reconnected.
                        allowed = [c for c in message.chunks
                                   if not checker or await checker.allows(c.request_id, c.worker_id, bool(c.outcome))]
                        for c in allowed:  # the others are not this caller's: dropped, never delivered
                            deliver(c)
                        self.links.processed(link, message.seq)
                    if message.seq:
                        outbox.put_nowait(message.seq)
                outbox.put_nowait("")  # the worker closed its side
            except Unavailable as e:
                outbox.put_nowait(e)

        def deliver(c) -> None:
            if c.worker_id and c.worker_id not in listeners:
                listeners[c.worker_id] = self.inflight.listen_cancellations(c.worker_id)
                forwarders.append(asyncio.create_task(_forward(listeners[c.worker_id], outbox)))
            if not self.inflight.deliver(chunk_from_pb(c)) and not c.outcome:
                outbox.put_nowait(c.request_id)  # nobody waits for these tokens: stop it

        reader = asyncio.create_task(consume())
        try:
            while (response := await responses.next()) is not None:
                yield response
        finally:
            responses.close()
            for task in (reader, *forwarders):
                task.cancel()
            for worker_id, queue in listeners.items():
                self.inflight.stop_listening(worker_id, queue)

    async def Fence(self, request, context):
        if self.authz is not None:  # PERMISSION_DENIED through the one error path
            await self.authz.check_fence(current_caller(), request.request_id)
        stream = self.inflight.get(request.request_id)
        if stream is None or not stream.fence(request.attempt):
            return token_sink_pb2.FenceResponse(found=False)
        return token_sink_pb2.FenceResponse(found=True, delivered_token_ids=stream.delivered_token_ids,
                                            delivered_text="".join(stream.delivered_text))


async def _forward(source: asyncio.Queue[str], outbox: asyncio.Queue[str]) -> None:
    while True:
        outbox.put_nowait(await source.get())


