"""A client that leaves in the very loop turn its next token arrives still ends its stream.

Python 3.11's asyncio.wait_for returns a result that is ready when a cancel lands, swallowing
the cancel: the gateway's stream then ran to its end for nobody, holding the tenant's lease
(issue 21: after the flood's connections closed, their leases stayed until max_tokens)."""

from __future__ import annotations

import asyncio

import pytest

from llmserve.gateway.admission.validation import GenerateParams
from llmserve.gateway.app import GatewayService
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.settings import GatewaySettings
from llmserve.gateway.streams.inflight import TokenEvent
from tests.support.polling import wait_for
from tests.support.stack import MODEL


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load([MODEL])


async def test_a_cancel_landing_with_an_event_ends_the_stream_and_frees_the_lease(redis_url, catalog):
    service = GatewayService(GatewaySettings(redis_url=redis_url, port=0, api_keys=["t=k"]), catalog=catalog)
    service.limiter.start()
    await service.limiter.warm_up()
    try:
        job = await service.generation.admit("Bearer k", GenerateParams(model=MODEL, prompt="Hi", max_tokens=50))
        assert service.limiter.live_leases == 1
        events = service.generation.stream(job, 30)
        nxt = asyncio.ensure_future(anext(events))
        await wait_for(lambda: service.inflight.get(job.request_id) is not None)
        await asyncio.sleep(0.02)  # the stream waits for its first event
        service.inflight.get(job.request_id).events.put_nowait(TokenEvent(0, [1], "a"))
        nxt.cancel()  # the client goes away in the same loop turn
        with pytest.raises(asyncio.CancelledError):
            await nxt
        await wait_for(lambda: service.limiter.live_leases == 0, timeout=2)
        assert service.inflight.get(job.request_id) is None
    finally:
        await service.limiter.close()
        await service.redis.aclose()
