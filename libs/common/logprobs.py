"""Per-token log probabilities as they travel engine -> worker -> token sink -> gateway."""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.common.tokensink.v1 import token_sink_pb2 as pb


@dataclass(frozen=True)
class TokenLogprob:
    """The model's log probability of one completion token, and the `top` alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


def to_sink_pb(lp: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob, top_token_ids=[t for t, _ in lp.top],
                           top_logprobs=[v for _, v in lp.top])


def from_sink_pb(msg: pb.TokenLogprob) -> TokenLogprob:
    return TokenLogprob(msg.token_id, msg.logprob, tuple(zip(msg.top_token_ids, msg.top_logprobs, strict=True)))
