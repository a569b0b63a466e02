"""Per-sequence sampling over a batch of logits, as batched tensor ops.

Every control is a per-row tensor: logit bias, the penalties (repetition over prompt +
completion, presence and frequency over the completion, as OpenAI and vLLM define them),
suppressed ids (EOS and stop ids before `min_tokens`), an optional allowed-token mask,
temperature, top-k, top-p, min-p. Sampled rows draw by an exponential race whose noise is a
counter-based hash of (request seed, completion index, token id): the draw for a token
depends only on the request and its logits, never on the batch around it, so a seeded
request gives the same text alone, in any batch, and after a resume. One device-to-host
copy per step brings back the ids (and the log probabilities, when any row asks).

Reported log probabilities are the model's own (log-softmax of the fp32 logits before any
penalty, bias, mask or temperature), as OpenAI and vLLM report them by default.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from .types import SamplingParams, TokenLogprob

_MASK64 = (1 << 64) - 1


def step_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for completion token `index` of a request (splitmix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def new_request_seed() -> int:
    """A seed for requests that did not ask for one (still batch-independent)."""
    return random.getrandbits(63)


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_M1, _M2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def exponential_noise(seeds: torch.Tensor, vocab: int) -> torch.Tensor:
    """[B, vocab] Exp(1) noise; row b is a pure function of seeds[b] (int64, on the device).

    splitmix64 of (seed + token id) in wrapping int64 arithmetic, top 24 bits as a uniform.
    """
    ids = torch.arange(1, vocab + 1, device=seeds.device, dtype=torch.int64)
    z = seeds.unsqueeze(1) + ids.unsqueeze(0) * _signed(0x9E3779B97F4A7C15)
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    z = z ^ _shr(z, 31)
    u = (_shr(z, 40).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(u)


@dataclass
class SampleRow:
    """What the sampler needs to know about one row of logits."""

    params: SamplingParams
    seed: int  # the sequence's seed stream (given or drawn at admission; per choice)
    index: int  # completion index of the token being sampled
    seen_token_ids: list[int]  # prompt + completion so far, for the repetition penalty
    output_token_ids: list[int] = field(default_factory=list)  # completion so far (presence/frequency)
    suppress_ids: tuple[int, ...] = ()  # ids that must not be drawn now (EOS before min_tokens)


@dataclass
class SampleResult:
    token_id: int
    logprob: TokenLogprob | None = None  # set when the row's params ask for logprobs


class Sampler:
    """Turns a [batch, vocab] logits tensor into one token id per row."""

    def __call__(self, logits: torch.Tensor, rows: list[SampleRow],
                 allowed: torch.Tensor | None = None) -> list[int]:
        return [r.token_id for r in self.sample(logits, rows, allowed)]

    def sample(self, logits: torch.Tensor, rows: list[SampleRow],
               allowed: torch.Tensor | None = None) -> list[SampleResult]:
        """Sample one token per row; `allowed` is an optional [batch, vocab] bool mask
        (True = may be drawn), e.g. a grammar's token bitmask unpacked on the device."""
        logits = logits.float()
        dev, n_rows, vocab = logits.device, logits.shape[0], logits.shape[1]
        want_lp = [r.params.logprobs is not None for r in rows]
        raw_lp = torch.log_softmax(logits, dim=-1) if any(want_lp) else None
        x = _processed(logits, rows)
        # Hook for structured outputs: a per-sequence allowed-token mask is applied here,
        # after bias and penalties and before temperature/top-k/top-p, so the filters and
        # the greedy argmax only ever see tokens the grammar allows.
        if allowed is not None:
            x = x.masked_fill(~allowed.to(dev), float("-inf"))
        greedy = x.argmax(dim=-1)
        tokens = greedy
        if any(r.params.temperature > 0.0 for r in rows):
            sampled = _sample(x, rows)
            is_sampled = torch.tensor([r.params.temperature > 0.0 for r in rows], device=dev)
            tokens = torch.where(is_sampled, sampled, greedy)
        if raw_lp is None:
            return [SampleResult(t) for t in tokens.tolist()]
        return _with_logprobs(tokens, raw_lp, rows, n_rows, vocab)


def _processed(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """Logits after bias, penalties and suppressed ids (a copy when anything applies)."""
    dev, vocab = logits.device, logits.shape[1]
    bias = [(i, t, b) for i, r in enumerate(rows) for t, b in r.params.logit_bias if 0 <= t < vocab]
    sup = [(i, t) for i, r in enumerate(rows) for t in r.suppress_ids if 0 <= t < vocab]
    rep = [i for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0 and r.seen_token_ids]
    pf = [i for i, r in enumerate(rows) if (r.params.presence_penalty or r.params.frequency_penalty)
          and r.output_token_ids]
    if not (bias or sup or rep or pf):
        return logits
    x = logits.clone(memory_format=torch.contiguous_format)  # x.view(-1) below
    if bias:
        ri, ti, bv = zip(*bias, strict=True)
        x.index_put_((_t(ri, dev), _t(ti, dev)), torch.tensor(bv, device=dev), accumulate=True)
    if rep:  # x / p where positive, x * p where not, on the seen tokens only
        at, sub = _seen(x, [rows[i].seen_token_ids for i in rep], rep)
        penalty = torch.tensor([rows[i].params.repetition_penalty for i in rep], device=dev)[at.row]
        x.view(-1)[at.flat] = torch.where(sub > 0, sub / penalty, sub * penalty)
    if pf:  # x - (frequency * count + presence) on the completion's tokens only
        at, sub = _seen(x, [rows[i].output_token_ids for i in pf], pf)
        pres = torch.tensor([rows[i].params.presence_penalty for i in pf], device=dev)[at.row]
        freq = torch.tensor([rows[i].params.frequency_penalty for i in pf], device=dev)[at.row]
        x.view(-1)[at.flat] = sub - (freq * at.count + pres)
    if sup:
        ri, ti = zip(*sup, strict=True)
        x[_t(ri, dev), _t(ti, dev)] = float("-inf")
    return x


def _t(values, dev) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=dev)


@dataclass
class _Seen:
    flat: torch.Tensor  # row * vocab + token id of each distinct (row, token), into x.view(-1)
    row: torch.Tensor  # its position in the penalised rows' list
    count: torch.Tensor  # its occurrences (float32)


def _seen(x: torch.Tensor, id_lists: list[list[int]], idx: list[int]) -> tuple[_Seen, torch.Tensor]:
    """The distinct tokens of each penalised row and their current logits.

    Penalties only change the logits of tokens a sequence holds (a few hundred per row against
    a vocabulary of tens of thousands), so they are gathered, changed and scattered back rather
    than computed densely over [rows, vocab]; the arithmetic per element is the same, so the
    results are bit-identical to the dense form. One host-to-device copy.
    """
    vocab = x.shape[1]
    flat_ids = [i * vocab + t for i, ids in zip(idx, id_lists, strict=True) for t in ids]
    pos = [j for j, ids in enumerate(id_lists) for _ in ids]
    both = torch.tensor([flat_ids, pos], dtype=torch.long).to(x.device, non_blocking=True)
    flat, inverse, count = torch.unique(both[0], return_inverse=True, return_counts=True)
    row = torch.empty_like(flat).scatter_(0, inverse, both[1])
    return _Seen(flat, row, count.float()), x.view(-1)[flat]


def _sample(x: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p and the seeded draw for every row (greedy rows too;
    their result is discarded)."""
    dev, vocab = x.device, x.shape[1]
    temp = torch.tensor([r.params.temperature if r.params.temperature > 0 else 1.0 for r in rows], device=dev)
    x = x / temp.unsqueeze(1)
    top_k = [r.params.top_k if 0 < r.params.top_k < vocab else 0 for r in rows]
    top_p = [r.params.top_p for r in rows]
    if any(top_k) or any(p < 1.0 for p in top_p):
        x = _top_k_top_p(x, top_k, top_p)
    probs = torch.softmax(x, dim=-1)
    min_p = [r.params.min_p for r in rows]
    if any(m > 0.0 for m in min_p):
        floor = torch.tensor(min_p, device=dev).unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
    seeds = torch.tensor([_signed(step_seed(r.seed, r.index)) for r in rows], dtype=torch.int64, device=dev)
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p (unnormalised p is fine).
    return (probs / exponential_noise(seeds, vocab)).argmax(dim=-1)


_TOP_P_WINDOW = 1024  # top-p alone looks at this many best tokens first (a full sort is the fallback)


def _top_k_top_p(x: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Mask each row below its top-k / top-p cut (rows with neither keep everything).

    Works on the `width` best tokens of each row (topk, not a full sort, which dominates a CPU
    step): a top-k row's cut is inside its k best; a top-p-only row's is inside the window when
    the window holds top_p of the mass, else the batch falls back to a full sort.
    """
    vocab = x.shape[1]
    p_only = any(not k and p < 1.0 for k, p in zip(top_k, top_p, strict=True))
    width = min(vocab, max([k for k in top_k if k] + ([_TOP_P_WINDOW] if p_only else [])))
    cut = _cut(x, top_k, top_p, width)
    if cut is None:
        cut = _cut(x, top_k, top_p, vocab)
    return x.masked_fill(x < cut, float("-inf"))


def _cut(x: torch.Tensor, top_k: list[int], top_p: list[float], width: int) -> torch.Tensor | None:
    dev, vocab = x.device, x.shape[1]
    vals = x.topk(width, dim=-1).values if width < vocab else x.sort(dim=-1, descending=True).values
    has_k = torch.tensor([bool(k) for k in top_k], device=dev).unsqueeze(1)
    k = torch.tensor([min(k, width) if k else width for k in top_k], dtype=torch.long, device=dev)
    kth = vals.gather(1, (k - 1).unsqueeze(1))
    vals = vals.masked_fill(vals < kth, float("-inf"))
    # Probabilities over the whole row: a top-k row's support is its window, a top-p row's is not.
    lse = torch.where(has_k, torch.logsumexp(vals, -1, keepdim=True), torch.logsumexp(x, -1, keepdim=True))
    probs = torch.exp(vals - lse)
    cum = torch.cumsum(probs, dim=-1)
    p = torch.tensor(top_p, device=dev).unsqueeze(1)
    if width < vocab and bool(((cum[:, -1:] < p) & (p < 1.0) & ~has_k).any()):
        return None  # some top-p row's cut lies past the window
    # Keep the smallest set whose mass reaches top_p (always at least the top token).
    drop = ((cum - probs) >= p) & (p < 1.0)
    kept = vals.masked_fill(drop, float("inf")).min(dim=-1, keepdim=True).values
    none = ~has_k & (p >= 1.0)  # rows without a filter
    return torch.where(none, torch.full_like(kept, float("-inf")), torch.maximum(kept, kth.where(has_k, kept)))


def token_logprobs(logits: torch.Tensor, token_ids: list[int], k: int) -> list[TokenLogprob]:
    """Each row's log probability of `token_ids[row]` and its top `k` (prompt logprobs, echo)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    ids = torch.tensor(token_ids, dtype=torch.long, device=lp.device)
    parts = [lp.gather(1, ids.unsqueeze(1)).squeeze(1).double()]
    if k:
        top_lp, top_ids = lp.topk(k, dim=-1)
        parts += [top_ids.double().flatten(), top_lp.double().flatten()]
    flat = torch.cat(parts).cpu().tolist()  # one device-to-host copy
    n = len(token_ids)
    tops_i, tops_v = flat[n : n + n * k], flat[n + n * k :]
    return [TokenLogprob(t, flat[i], tuple((int(tops_i[i * k + j]), tops_v[i * k + j]) for j in range(k)))
            for i, t in enumerate(token_ids)]


def _with_logprobs(tokens, raw_lp, rows, n_rows, vocab) -> list[SampleResult]:
    k = min(vocab, max(r.params.logprobs or 0 for r in rows))
    chosen = raw_lp.gather(1, tokens.unsqueeze(1)).squeeze(1)
    parts = [tokens.double(), chosen.double()]
    if k:
        top_lp, top_ids = raw_lp.topk(k, dim=-1)
        parts += [top_ids.double().flatten(), top_lp.double().flatten()]
    flat = torch.cat(parts).cpu().tolist()  # the step's one device-to-host copy
    ids, lps = flat[:n_rows], flat[n_rows : 2 * n_rows]
    tops_i, tops_v = flat[2 * n_rows : 2 * n_rows + n_rows * k], flat[2 * n_rows + n_rows * k :]
    out = []
    for i, r in enumerate(rows):
        token = int(ids[i])
        if r.params.logprobs is None:
            out.append(SampleResult(token))
            continue
        n = r.params.logprobs
        top = tuple((int(tops_i[i * k + j]), tops_v[i * k + j]) for j in range(n))
        out.append(SampleResult(token, TokenLogprob(token, lps[i], top)))
    return out
