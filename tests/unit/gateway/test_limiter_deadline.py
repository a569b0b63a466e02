"""The rate limiter's deadline (limiter_sender): on time it times out, a stall of our own does
not count, a cancel from outside stays a cancel, and the deadline never cancels the task that
sends (that cancel is what wedged the old sender, issue 21)."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmserve.gateway.admission.limiter_sender import BatchSender, Call, RedisDown

TIMEOUT = 0.02


class Answering:
    """A `send` that answers every call with "answer" after `delay`, doing `before` first."""

    def __init__(self, delay: float, before=None):
        self.delay = delay
        self.before = before
        self.finished: list[Call] = []
        self.cancel_counts: list[int] = []

    async def __call__(self, batch: list[Call]) -> None:
        if self.before is not None:
            self.before()
        await asyncio.sleep(self.delay)
        self.cancel_counts.append(asyncio.current_task().cancelling())
        for call in batch:
            if not call.future.done():
                call.future.set_result("answer")
            self.finished.append(call)


def sender_for(send) -> BatchSender:
    return BatchSender(send, TIMEOUT, on_lost=lambda batch, error: None)


async def test_an_answer_within_the_deadline_is_returned():
    sender = sender_for(Answering(0.001))
    assert await sender.submit("acquire", "t", []).future == "answer"


async def test_no_answer_in_time_is_redis_down_and_the_sender_is_not_cancelled():
    send = Answering(0.3)
    sender = sender_for(send)
    started = time.perf_counter()
    call = sender.submit("acquire", "t", [])
    with pytest.raises(RedisDown):
        await call.future
    assert time.perf_counter() - started < 0.2
    assert call.expired
    # The batch goes on waiting for its answer (the limiter reconciles it), never cancelled.
    await asyncio.sleep(0.4)
    assert send.finished == [call] and send.cancel_counts == [0]


async def test_a_stall_of_this_process_gets_one_more_deadline():
    # The event loop is blocked past the 20 ms deadline, and the answer comes right after.
    sender = sender_for(Answering(0.005, before=lambda: time.sleep(0.05)))
    assert await sender.submit("acquire", "t", []).future == "answer"


async def test_a_cancel_from_outside_stays_a_cancel():
    sender = sender_for(Answering(5))
    call = sender.submit("acquire", "t", [])
    task = asyncio.create_task(asyncio.wait_for(asyncio.shield(call.future), 10))
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sender.close()


async def test_calls_made_in_one_loop_turn_share_a_batch():
    batches: list[int] = []

    async def send(batch):
        batches.append(len(batch))
        await asyncio.sleep(0.001)
        for call in batch:
            call.future.set_result(None)

    sender = BatchSender(send, 1.0, on_lost=lambda batch, error: None)
    await asyncio.gather(*(sender.submit("acquire", "t", []).future for _ in range(600)))
    # the first call goes out alone at once (idle), the rest in full batches behind it
    assert batches[0] == 1 and sum(batches) == 600 and len(batches) <= 5


async def test_the_oldest_open_call_is_the_admission_pulse():
    sender = BatchSender(Answering(0.05), 1.0, on_lost=lambda batch, error: None)
    assert sender.oldest_open_s == 0.0
    call = sender.submit("release", "t", [])
    await asyncio.sleep(0.01)
    assert 0.005 < sender.oldest_open_s < 0.05
    await call.future
    assert sender.oldest_open_s == 0.0


async def test_a_busy_loop_gets_one_more_deadline():
    # Not one long stall but many short callbacks: the timer fires about on time, yet every
    # loop turn takes longer than the stall bound, so this process is the slow one, not Redis.
    loop, busy = asyncio.get_running_loop(), [True]

    def work() -> None:
        time.sleep(0.001)
        if busy[0]:
            loop.call_soon(work)

    for _ in range(8):
        loop.call_soon(work)
    try:
        assert await sender_for(Answering(0.03)).submit("acquire", "t", []).future == "answer"
    finally:
        busy[0] = False


async def test_time_queued_behind_other_batches_is_not_counted_against_redis():
    async def send(batch):  # each batch takes 10 ms of a 50 ms deadline
        await asyncio.sleep(0.01)
        for call in batch:
            call.future.set_result("answer")

    sender = BatchSender(send, 0.05, on_lost=lambda batch, error: None, max_in_flight=1)
    answers = await asyncio.gather(*(sender.submit("acquire", "t", []).future for _ in range(5000)))
    assert answers == ["answer"] * 5000  # 20 batches one after another: the last waits ~200 ms


async def test_a_batch_past_its_deadline_gives_up_its_slot():
    answered: list[Call] = []

    async def send(batch):  # the first batch never hears back; the others do at once
        if not answered:
            answered.append(batch[0])
            await asyncio.sleep(5)
        for call in batch:
            call.future.set_result("answer")

    sender = BatchSender(send, TIMEOUT, on_lost=lambda batch, error: None, max_in_flight=1)
    hung = sender.submit("release", "t", [])
    behind = sender.submit("release", "t", [])
    with pytest.raises(RedisDown):
        await hung.future
    assert await asyncio.wait_for(behind.future, 0.5) == "answer"
    await sender.close()


async def test_a_call_nothing_sends_still_fails_after_max_wait():
    sender = BatchSender(Answering(0), TIMEOUT, on_lost=lambda batch, error: None, max_in_flight=0,
                         max_wait=0.1)  # fmt: skip
    started = time.perf_counter()
    with pytest.raises(RedisDown):
        await sender.submit("release", "t", []).future
    assert 0.09 < time.perf_counter() - started < 0.5
