from llmserve.common.errors import DeadlineExceeded
from llmserve.gateway.streams.inflight import Chunk, FinishEvent, RequestStream, TokenEvent


def events(stream: RequestStream) -> list:
    out = []
    while not stream.events.empty():
        out.append(stream.events.get_nowait())
    return out


def test_every_index_is_delivered_once_across_attempts():
    s = RequestStream("r")
    s.offer(Chunk("r", 1, 0, [10], "a"))
    s.offer(Chunk("r", 1, 1, [11], "b"))
    # attempt 2 replays from the start after a worker died
    s.offer(Chunk("r", 2, 0, [10], "a"))
    s.offer(Chunk("r", 2, 1, [11], "b"))
    s.offer(Chunk("r", 2, 2, [12], "c"))
    s.offer(Chunk("r", 2, 3, [], "", outcome="stop", prompt_tokens=5, completion_tokens=3))
    got = events(s)
    assert [(e.index, e.token_ids) for e in got if isinstance(e, TokenEvent)] == [(0, [10]), (1, [11]), (2, [12])]
    assert isinstance(got[-1], FinishEvent) and got[-1].completion_tokens == 3


def test_a_stale_attempt_is_fenced_off():
    s = RequestStream("r")
    s.offer(Chunk("r", 2, 0, [10], "a"))
    s.offer(Chunk("r", 1, 1, [99], "stale"))  # the old worker woke up
    s.offer(Chunk("r", 1, 1, [], "", outcome="stop"))
    s.offer(Chunk("r", 2, 1, [11], "b"))
    assert [(e.index, e.text) for e in events(s)] == [(0, "a"), (1, "b")]
    assert not s.finished


def test_a_gap_is_not_delivered_out_of_order():
    s = RequestStream("r")
    s.offer(Chunk("r", 1, 2, [12], "c"))
    assert events(s) == []


def test_overlapping_chunk_delivers_only_new_tokens():
    s = RequestStream("r")
    s.offer(Chunk("r", 1, 0, [10, 11], "ab"))
    s.offer(Chunk("r", 2, 1, [11, 12], "bc"))
    got = events(s)
    assert [(e.index, e.token_ids) for e in got] == [(0, [10, 11]), (2, [12])]


def test_deadline_outcome_becomes_an_error_event_and_ends_the_stream():
    s = RequestStream("r")
    s.offer(Chunk("r", 1, 0, [], "", outcome="deadline"))
    s.offer(Chunk("r", 1, 0, [10], "late"))
    got = events(s)
    assert len(got) == 1 and isinstance(got[0], DeadlineExceeded)


def test_a_reattached_stream_delivers_from_the_clients_index_and_learns_what_came_before():
    s = RequestStream("r")
    s.next_index = 2  # the client re-attached with two tokens
    for i, t in enumerate("abcd"):
        s.offer(Chunk("r", 1, i, [10 + i], t))
    s.offer(Chunk("r", 1, 1, [], "held"))  # held-back text of an index the client has: not again
    got = events(s)
    assert [(e.index, e.token_ids, e.text) for e in got] == [(2, [12], "c"), (3, [13], "d")]
    assert s.delivered_token_ids == [10, 11, 12, 13] and "".join(s.delivered_text) == "abcd"


def test_a_reattach_on_the_same_gateway_ends_the_older_local_stream():
    from llmserve.common.errors import Cancelled
    from llmserve.gateway.streams.inflight import InflightRegistry

    registry = InflightRegistry()
    old = registry.open("r")
    assert registry.open("r") is None  # a plain second request is refused
    new = registry.open("r", replace=True)
    assert isinstance(events(old)[0], Cancelled)
    registry.close("r", old)  # the old call's cleanup leaves its successor
    assert registry.get("r") is new


def test_logprobs_travel_with_their_tokens_through_the_sink_proto():
    from llmserve.common.logprobs import TokenLogprob, from_sink_pb, to_sink_pb
    from llmserve.common.tokensink.client import OutChunk
    from llmserve.gateway.streams.reattach import chunk_from_pb

    lps = [TokenLogprob(10, -0.5, ((10, -0.5), (7, -1.25))), TokenLogprob(11, -2.0, ((3, -0.75), (11, -2.0)))]
    assert [from_sink_pb(to_sink_pb(lp)) for lp in lps] == lps
    chunk = chunk_from_pb(OutChunk("r", 1, 0, [10, 11], "ab", logprobs=lps).to_pb("w1"))
    assert chunk.logprobs == lps
    assert chunk_from_pb(OutChunk("r", 1, 0, [10], "a").to_pb("w1")).logprobs is None
    s = RequestStream("r")
    s.offer(Chunk("r", 1, 0, [10], "a", logprobs=lps[:1]))
    s.offer(chunk)  # overlaps index 0: only token 11 and its logprob are new
    got = events(s)
    assert [(e.token_ids, e.logprobs) for e in got] == [([10], lps[:1]), ([11], lps[1:])]
