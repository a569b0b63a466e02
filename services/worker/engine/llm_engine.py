"""`LLMEngine`: the continuous-batching engine behind the `Engine` protocol.

One step: take queued adds/aborts, cancel what is past its deadline, schedule, run the model
on the flat batch, sample, then detokenize and check stop conditions per sequence.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import torch

from .batch_scheduler import BatchScheduler
from .config import EngineConfig
from .detokenizer import IncrementalDetokenizer
from .grammar import GrammarBackend, accept
from .loader import EngineParts, load_engine_parts
from .model_runner import prompt_logit_rows
from .profiling import StepTimer, TraceRecorder
from .sampler import Sampler, SampleRow, new_request_seed, token_logprobs
from .sequence import Sequence
from .types import EngineRequest, EngineStats, FinishReason, StepStats, TokenOutput


class LLMEngine:
    """Continuous batching over one model; implements `interface.Engine`.

    `add_request`/`abort_request`/`stats` are safe from any thread (they touch only a
    lock-protected inbox and a stats snapshot); `step` runs on one engine thread.
    """

    def __init__(self, config: EngineConfig, parts: EngineParts):
        self.config = config
        self.tokenizer = parts.tokenizer
        self.runner = parts.runner
        self.block_manager = parts.block_manager
        self.eos_token_ids = parts.eos_token_ids
        self.max_model_len = parts.runner.max_model_len
        self.batch_scheduler = BatchScheduler(parts.block_manager, config.max_num_seqs,
                                              config.max_num_batched_tokens, config.decode_replay)
        self.sampler = Sampler()
        self.grammar = GrammarBackend(self.tokenizer, self.eos_token_ids)  # structured output
        self.timer = StepTimer()  # host-side marks; given to the runner each step
        self.tracer = TraceRecorder()
        self._lock = threading.Lock()
        self._inbox: list[EngineRequest] = []
        self._aborts: list[str] = []
        self._live: dict[str, Sequence] = {}  # request_id -> sequence, engine thread only
        self._live_ids: set[str] = set()  # ids queued or live, under the lock
        self._seeds: dict[int, int] = {}
        self._forks: list[tuple[Sequence, str]] = []  # choices waiting for their parent's prompt KV
        self._stats = self._snapshot()
        self._by_priority: dict[tuple[str, int], int] = {}
        self.last_step = StepStats()  # what the latest step computed (engine thread)
        self.step_totals = StepStats()  # the sum over every step so far

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLMEngine:
        """Load the model and tokenizer, size the KV cache, pick the fast or fallback path."""
        config.validate()
        return cls(config, load_engine_parts(config))

    @classmethod
    def from_model(cls, config: EngineConfig, hf_model, tokenizer) -> LLMEngine:
        """Build around an already loaded transformers model (tests, notebooks)."""
        config.validate()
        return cls(config, load_engine_parts(config, hf_model=hf_model, tokenizer=tokenizer))

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, **kwargs) -> LLMEngine:
        """Shorthand: `LLMEngine.from_pretrained(path, device="cpu", max_num_seqs=32, ...)`."""
        return cls.from_config(EngineConfig(model=model_dir, **kwargs))

    # Thread-safe API -----------------------------------------------------------------------
    def add_request(self, request: EngineRequest) -> None:
        """Queue a request; it joins the running batch at the next step boundary."""
        with self._lock:
            if request.request_id in self._live_ids:
                raise ValueError(f"request id {request.request_id!r} is already in the engine")
            self._live_ids.add(request.request_id)
            self.grammar.submit(request)  # a constrained request waits in the inbox until compiled
            self._inbox.append(request)

    def abort_request(self, request_id: str) -> None:
        """Cancel a request wherever it is; it finishes CANCELLED at the next step."""
        with self._lock:
            if request_id in self._live_ids:
                self._aborts.append(request_id)

    def has_unfinished(self) -> bool:
        """True while any request is queued, waiting or running."""
        with self._lock:
            return bool(self._live_ids)

    def sequence_counts(self) -> dict[tuple[str, int], int]:
        """Sequences by (state, priority) as of the last step boundary; state is running or
        waiting (queued requests not yet admitted are not counted)."""
        with self._lock:
            return dict(self._by_priority)

    def stats(self) -> EngineStats:
        """KV and queue accounting as of the last step boundary (plus requests queued since)."""
        with self._lock:
            s, queued = self._stats, len(self._inbox)
        return dataclasses.replace(s, waiting=s.waiting + queued)

    # Profiling -----------------------------------------------------------------------------
    @property
    def last_step_timings(self) -> dict[str, float]:
        """Seconds per phase of the last step that ran the model."""
        return dict(self.timer.last)

    def timing_totals(self) -> dict[str, float]:
        return self.timer.summary()

    def start_profile(self, n_steps: int, path: str | Path) -> None:
        """Record a torch.profiler Chrome trace of the next `n_steps` steps to `path`."""
        self.tracer.start(n_steps, path, cuda=self.config.torch_device().type == "cuda")

    # The step ------------------------------------------------------------------------------
    def step(self) -> list[TokenOutput]:
        """Run one iteration; return the new output of every request that progressed or ended."""
        with torch.inference_mode():
            outputs: list[TokenOutput] = []
            # Device-accurate phases only while a trace records: syncing costs every step.
            self.timer.sync_cuda = self.tracer.active and self.config.torch_device().type == "cuda"
            self.timer.start()
            self._drain_inbox(outputs)
            self._expire_deadlines(outputs)
            sched = self.batch_scheduler.schedule()
            self.timer.mark("schedule")
            # A plan that only preempted runs nothing, but its preemptions still count.
            step = StepStats(preempted=len(sched.preempted))
            if not sched.is_empty:
                step = self._run(sched, outputs)
                self.tracer.after_step()
                self.timer.finish(sched.num_tokens)
            self.last_step, self.step_totals = step, self.step_totals + step
            self._end_step(outputs)
            return outputs

    def _run(self, sched, outputs: list[TokenOutput]) -> StepStats:
        logits = self.runner.execute(sched, self.timer)
        self.timer.mark("forward")
        sampling = [item.seq for item in sched.scheduled if item.sample]
        self._collect_prompt_logprobs(sched, logits[len(sampling):])
        step = self.batch_scheduler.update_after_step(sched)
        # max_tokens 0 (echo): the prompt is computed for its logprobs, nothing is sampled.
        for seq in [s for s in sampling if s.sampling.max_tokens == 0]:
            self._finish(seq, FinishReason.LENGTH, outputs)
        keep = [i for i, s in enumerate(sampling) if s.sampling.max_tokens > 0]
        sample_logits = logits[: len(sampling)] if len(keep) == len(sampling) else logits[keep]
        sampling = [sampling[i] for i in keep]
        rows = [self._sample_row(seq) for seq in sampling]
        if rows:  # the constraint's mask first: the sampler draws only what it allows
            sample_logits = self.grammar.mask(sample_logits, [seq.grammar for seq in sampling])
        results = self.sampler.sample(sample_logits, rows) if rows else []
        self.timer.mark("sample")
        for seq, result in zip(sampling, results, strict=True):
            self._append_token(seq, result.token_id, outputs, result.logprob)
        self.timer.mark("detokenize")
        return step

    def _collect_prompt_logprobs(self, sched, rows) -> None:
        """Log probabilities of the prompt tokens this step's chunks predicted (echo)."""
        at = 0
        for item in sched.scheduled:
            n = prompt_logit_rows(item)
            if not n:
                continue
            seq, start = item.seq, item.seq.num_computed_tokens
            if len(seq.prompt_logprobs) == start:  # a recompute after preemption adds nothing
                nxt = seq.token_ids[start + 1 : start + 1 + n]
                seq.prompt_logprobs += token_logprobs(rows[at : at + n], nxt, seq.sampling.prompt_logprobs or 0)
            at += n

    def _sample_row(self, seq: Sequence) -> SampleRow:
        p = seq.sampling
        seen = seq.token_ids if p.repetition_penalty != 1.0 else []
        output = seq.completion_token_ids if p.presence_penalty or p.frequency_penalty else []
        suppress: tuple[int, ...] = ()
        if seq.num_completion_tokens < p.min_tokens:
            suppress = p.stop_token_ids + (() if p.ignore_eos else tuple(self.eos_token_ids))
        return SampleRow(p, self._seeds[seq.seq_id], seq.num_completion_tokens, seen, output, suppress)

    # Request lifecycle -------------------------------------------------------------------
    def _drain_inbox(self, outputs: list[TokenOutput]) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
        idle = not self.batch_scheduler.running and not self.batch_scheduler.waiting
        inbox, compiling = self.grammar.split_ready(inbox, idle)
        for request in inbox:
            self._add_sequence(request, outputs)
        self._start_forks()
        for request_id in aborts:
            seq = self._live.get(request_id)
            if seq is not None:
                self._finish(seq, FinishReason.CANCELLED, outputs)
        if compiling:  # still compiling: they (and aborts meant for them) wait for the next step
            waiting_ids = {r.request_id for r in compiling}
            with self._lock:
                self._inbox[:0] = compiling
                self._aborts.extend(a for a in aborts if a in waiting_ids)

    def _add_sequence(self, request: EngineRequest, outputs: list[TokenOutput]) -> None:
        detok = IncrementalDetokenizer(
            self.tokenizer, request.prompt_token_ids + request.resume_token_ids, request.sampling.stop
        )
        seq = Sequence(request, detok)
        self._live[seq.request_id] = seq
        seed = request.sampling.seed
        self._seeds[seq.seq_id] = new_request_seed() if seed is None else seed
        seq.grammar, grammar_error = self.grammar.matcher(request)
        if grammar_error is not None:
            self._finish(seq, FinishReason.ERROR, outputs, error=grammar_error)
        elif not request.prompt_token_ids:
            self._finish(seq, FinishReason.ERROR, outputs, error="empty prompt")
        elif seq.num_tokens >= self.max_model_len:
            msg = f"prompt of {seq.num_tokens} tokens does not fit the context ({self.max_model_len})"
            self._finish(seq, FinishReason.ERROR, outputs, error=msg)
        elif seq.num_completion_tokens >= request.sampling.max_tokens and not (
                request.sampling.max_tokens == 0 and request.sampling.prompt_logprobs is not None):
            self._finish(seq, FinishReason.LENGTH, outputs)
        elif (request.fork_of and not request.resume_token_ids and request.fork_of in self._live
              and request.sampling.prompt_logprobs is None):
            self._forks.append((seq, request.fork_of))
        else:
            self.batch_scheduler.add(seq)

    def _start_forks(self) -> None:
        """Schedule the choices whose parent has computed its prompt (sharing its blocks), or
        is gone (they compute their own)."""
        waiting = []
        for seq, parent_id in self._forks:
            parent = self._live.get(parent_id)
            if seq.is_finished:
                continue
            if parent is not None and parent.num_computed_tokens < parent.num_prompt_tokens:
                waiting.append((seq, parent_id))
                continue
            if parent is not None:
                self.block_manager.fork_prompt(parent, seq)
            self.batch_scheduler.add(seq)
        self._forks = waiting

    def _expire_deadlines(self, outputs: list[TokenOutput]) -> None:
        now = time.time()
        expired = [s for s in self._live.values() if s.deadline is not None and s.deadline <= now]
        for seq in expired:
            self._finish(seq, FinishReason.DEADLINE_EXCEEDED, outputs)

    def _append_token(self, seq: Sequence, token: int, outputs: list[TokenOutput], logprob=None) -> None:
        seq.append_token(token)
        params = seq.sampling
        is_eos = (token in self.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids
        done = False
        if seq.grammar is not None:
            accepted, done = accept(seq.grammar, token)
            if not accepted:
                self._finish(seq, FinishReason.ERROR, outputs, error="sampled token rejected by the constraint")
                return
        result = seq.detokenizer.add_tokens([] if is_eos else [token])
        reason = None
        if is_eos or result.stopped or done:
            reason = FinishReason.STOP
        elif seq.num_completion_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = FinishReason.LENGTH
        text = result.text
        if reason is not None and not result.stopped:
            text += seq.detokenizer.flush()
        out = self._output(seq, [token], text, reason)
        out.logprobs = None if logprob is None else [logprob]
        outputs.append(out)
        seq.num_emitted_tokens += 1
        if reason is not None:
            self._release(seq, reason)

    def _finish(self, seq: Sequence, reason: FinishReason, outputs, error: str | None = None) -> None:
        outputs.append(self._output(seq, [], "", reason, error))
        self._release(seq, reason, error)

    def _release(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        seq.finish(reason, error)
        self.batch_scheduler.finish(seq)
        self.runner.release(seq)
        del self._live[seq.request_id]
        del self._seeds[seq.seq_id]
        with self._lock:
            self._live_ids.discard(seq.request_id)

    def _output(self, seq: Sequence, token_ids, text, reason, error=None) -> TokenOutput:
        return TokenOutput(
            request_id=seq.request_id,
            token_ids=token_ids,
            text=text,
            index=seq.num_emitted_tokens,
            finished=reason is not None,
            finish_reason=reason,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_completion_tokens,
            error=error,
            prompt_logprobs=self._take_prompt_logprobs(seq),
        )

    @staticmethod
    def _take_prompt_logprobs(seq: Sequence):
        if seq.sampling.prompt_logprobs is None or seq.prompt_logprobs_sent:
            return None
        if len(seq.prompt_logprobs) < seq.num_prompt_tokens - 1 and not seq.is_finished:
            return None
        seq.prompt_logprobs_sent = True
        return list(seq.prompt_logprobs)

    def _end_step(self, outputs: list[TokenOutput]) -> None:
        snapshot = self._snapshot()
        counts: dict[tuple[str, int], int] = {}
        for state, seqs in (("running", self.batch_scheduler.running), ("waiting", self.batch_scheduler.waiting)):
            for seq in seqs:
                counts[(state, seq.priority)] = counts.get((state, seq.priority), 0) + 1
        with self._lock:
            self._stats, self._by_priority = snapshot, counts

    def _snapshot(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            total_kv_blocks=bm.num_blocks,
            free_kv_blocks=bm.num_free_blocks,
            block_size=bm.block_size,
            running=len(self.batch_scheduler.running),
            waiting=len(self.batch_scheduler.waiting),
            max_running=self.batch_scheduler.max_num_seqs,
        )
