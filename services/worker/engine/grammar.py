"""Structured output in the engine: compile constraints off the step thread, mask the logits.

A constrained request waits in the engine's inbox while a pool thread compiles its grammar
(xgrammar; compiled grammars are cached by constraint, so a repeated schema costs nothing).
Once admitted, its sequence carries a `GrammarMatcher`. Before the sampler runs, every
constrained row gets its allowed-token bitmask (filled for the whole batch in one call) and
the disallowed logits are set to -inf in place; each sampled token then advances the matcher.
The matcher's stop tokens are the engine's EOS tokens: they are allowed exactly when the
constraint is complete, so a complete JSON value ends the completion with STOP.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import torch

from llmserve.common.structured import Constraint, grammar_of

from .types import EngineRequest

_CACHE_SIZE = 256  # compiled grammars kept (xgrammar keeps its own cache below this one too)


class GrammarBackend:
    """Compiles `Constraint`s for one tokenizer and applies them to batches of logits."""

    def __init__(self, tokenizer, eos_token_ids: frozenset[int], vocab_size: int | None = None):
        self._tokenizer = tokenizer
        self._stop_tokens = sorted(eos_token_ids)
        self._vocab_size = vocab_size or len(tokenizer)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="grammar-compile")
        self._lock = threading.Lock()
        self._cache: OrderedDict[Constraint, Future] = OrderedDict()
        self._compiled: dict[str, Future] = {}  # request id -> its compile, until admitted
        self._compiler: Any = None  # built in the pool thread: TokenizerInfo takes ~1 s
        self._batch_matcher: Any = None
        self._bitmask: torch.Tensor | None = None

    # Any thread ------------------------------------------------------------------------
    def submit(self, request: EngineRequest) -> None:
        """Start compiling `request`'s constraint (no-op for an unconstrained request)."""
        if request.constraint is None:
            return
        with self._lock:
            future = self._cache.get(request.constraint)
            if future is None or (future.done() and future.exception() is not None):
                future = self._pool.submit(self._compile, request.constraint)
                self._cache[request.constraint] = future
                while len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(request.constraint)
            self._compiled[request.request_id] = future

    def _compile(self, constraint: Constraint):
        import xgrammar as xgr

        if self._compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self._vocab_size,
                                                      stop_token_ids=self._stop_tokens)
            self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        return self._compiler.compile_grammar(grammar_of(constraint))

    # Engine thread ---------------------------------------------------------------------
    def split_ready(self, inbox: list[EngineRequest], idle: bool) -> tuple[list[EngineRequest], list[EngineRequest]]:
        """(requests to admit now, requests still compiling), in inbox order. `idle`: nothing else
        to run, so wait a moment for a compile instead of spinning the step loop."""
        with self._lock:
            pending = [self._compiled[r.request_id] for r in inbox if r.request_id in self._compiled]
        if idle and pending and not any(f.done() for f in pending):
            wait_futures(pending, timeout=0.01, return_when="FIRST_COMPLETED")
        ready: list[EngineRequest] = []
        waiting: list[EngineRequest] = []
        with self._lock:
            for r in inbox:
                f = self._compiled.get(r.request_id)
                (ready if f is None or f.done() else waiting).append(r)
        return ready, waiting

    def matcher(self, request: EngineRequest) -> tuple[Any, str | None]:
        """(matcher, None) for an admitted constrained request, advanced over its resume tokens;
        (None, error) when its constraint did not compile or rejects them; (None, None) if unconstrained."""
        with self._lock:
            future = self._compiled.pop(request.request_id, None)
        if future is None:
            return None, None
        import xgrammar as xgr

        try:
            matcher = xgr.GrammarMatcher(future.result(), override_stop_tokens=self._stop_tokens)
        except Exception as e:  # noqa: BLE001 -- the gateway checked it; a failure here ends only this request
            return None, f"constraint did not compile: {str(e).strip().splitlines()[0][:200]}"
        for token in request.resume_token_ids:
            if not matcher.accept_token(token):
                return None, "resumed tokens do not satisfy the constraint"
        return matcher, None

    def mask(self, logits: torch.Tensor, matchers: list[Any]) -> torch.Tensor:
        """Set the logits each row's matcher disallows to -inf (rows with None stay free)."""
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return logits
        import xgrammar as xgr

        if self._batch_matcher is None:
            self._batch_matcher = xgr.BatchGrammarMatcher(max_threads=1)
        if self._bitmask is None or self._bitmask.shape[0] < len(matchers):
            self._bitmask = xgr.allocate_token_bitmask(max(len(matchers), 8), self._vocab_size)
        bitmask = self._bitmask[: len(matchers)]
        self._batch_matcher.batch_fill_next_token_bitmask([matchers[i] for i in rows], bitmask, indices=rows)
        xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device, non_blocking=True),
                                        vocab_size=min(self._vocab_size, logits.shape[-1]), indices=rows)
        if logits.shape[-1] > self._vocab_size:  # padded vocabulary: no token lives there
            logits[rows, self._vocab_size :] = float("-inf")
        return logits


def accept(matcher: Any, token: int) -> tuple[bool, bool]:
    """Advance `matcher` by the sampled `token`: (accepted, constraint finished)."""
    ok = matcher.accept_token(token)
    return ok, matcher.is_terminated()
