"""A deterministic stand-in for LLMEngine: the gateway/scheduler/worker plumbing is tested
without torch. Completion token i of a request is (last prompt token + i + 1) % 1000 and
its text is "<token> "; a request ends with LENGTH after max_tokens."""

from __future__ import annotations

import threading
import time

from llmserve.worker.engine.types import EngineRequest, EngineStats, FinishReason, TokenOutput


class ScriptedEngine:
    def __init__(self, total_blocks: int = 100, block_size: int = 16, step_delay_s: float = 0.001,
                 stop_after: int = 0):
        self.stop_after = stop_after  # > 0: every request stops (reason STOP) after this many tokens
        self.total_blocks = total_blocks
        self.block_size = block_size
        self.step_delay_s = step_delay_s
        self._lock = threading.Lock()
        self._running: dict[str, tuple[EngineRequest, int]] = {}
        self._aborted: set[str] = set()  # every id ever aborted
        self._to_abort: set[str] = set()  # aborts of running requests not yet acted on
        self.seen: list[str] = []  # request ids in admission order
        self.seen_at: dict[str, float] = {}  # request id -> unix time of admission

    def add_request(self, request: EngineRequest) -> None:
        with self._lock:
            self.seen.append(request.request_id)
            self.seen_at[request.request_id] = time.time()
            self._running[request.request_id] = (request, len(request.resume_token_ids))

    def abort_request(self, request_id: str) -> None:
        with self._lock:
            self._aborted.add(request_id)
            if request_id in self._running:  # unknown ids are ignored, as the interface says
                self._to_abort.add(request_id)

    def has_unfinished(self) -> bool:
        with self._lock:
            return bool(self._running)

    def stats(self) -> EngineStats:
        with self._lock:
            used = len(self._running)
        return EngineStats(self.total_blocks, self.total_blocks - used, self.block_size, used, 0)

    def step(self) -> list[TokenOutput]:
        time.sleep(self.step_delay_s)
        outputs = []
        with self._lock:
            for rid, (req, done) in list(self._running.items()):
                if rid in self._to_abort:
                    outputs.append(self._out(req, [], done, FinishReason.CANCELLED))
                    del self._running[rid]
                    self._to_abort.discard(rid)  # the id may be added again (a newer attempt)
                    continue
                token = (req.prompt_token_ids[-1] + done + 1) % 1000
                done += 1
                finished = done >= req.sampling.max_tokens
                reason = FinishReason.LENGTH if finished else None
                if not finished and self.stop_after and done >= self.stop_after:
                    finished, reason = True, FinishReason.STOP
                outputs.append(self._out(req, [token], done - 1, reason))
                if finished:
                    del self._running[rid]
                else:
                    self._running[rid] = (req, done)
        return outputs

    @staticmethod
    def _out(req, tokens, index, reason):
        return TokenOutput(
            request_id=req.request_id, token_ids=tokens, text="".join(f"{t} " for t in tokens), index=index,
            finished=reason is not None, finish_reason=reason, prompt_tokens=len(req.prompt_token_ids),
            completion_tokens=index + len(tokens),
        )
