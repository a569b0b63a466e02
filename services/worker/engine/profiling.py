"""Where a step's time goes: a per-phase breakdown, and an on-demand torch.profiler trace.

`StepTimer` is always on (a few `perf_counter` calls per step, host side only: it never
synchronizes the device, so on CUDA "forward" is the launch time and the wait for the
kernels lands in "sample", where the step reads its sampled ids back); `TraceRecorder` wraps
the next N steps in `torch.profiler.profile` and writes a Chrome trace (open it in
chrome://tracing or https://ui.perfetto.dev), and while it records, the engine turns on
`StepTimer.sync_cuda` so the phases are device-accurate.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

PHASES = ("schedule", "prepare_inputs", "forward", "sample", "detokenize")


class StepTimer:
    """Per-step phase timings (seconds) plus cumulative totals since the engine started.

    `sync_cuda` synchronizes at every mark (five times a step): for profiling only, since a
    synchronizing step cannot overlap host work with the device's."""

    def __init__(self, sync_cuda: bool = False):
        self.sync_cuda = sync_cuda
        self.last: dict[str, float] = {}
        self.totals: dict[str, float] = {}
        self.num_steps = 0
        self._t = 0.0
        self._step_start = 0.0

    def start(self) -> None:
        self.last = {}
        self._step_start = self._t = time.perf_counter()

    def mark(self, phase: str) -> None:
        """Close `phase`: the time since the previous mark is charged to it."""
        if self.sync_cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.last[phase] = self.last.get(phase, 0.0) + now - self._t
        self._t = now

    def finish(self, num_tokens: int = 0) -> None:
        self.last["total"] = time.perf_counter() - self._step_start
        self.last["num_tokens"] = float(num_tokens)
        for key, value in self.last.items():
            self.totals[key] = self.totals.get(key, 0.0) + value
        self.num_steps += 1

    def summary(self) -> dict[str, float]:
        """Cumulative seconds per phase and the step count."""
        return {**self.totals, "steps": float(self.num_steps)}


class TraceRecorder:
    """Records a torch.profiler Chrome trace of the next `n_steps` engine steps."""

    def __init__(self) -> None:
        self._prof = None
        self._left = 0
        self._path: Path | None = None
        self.last_trace: Path | None = None

    @property
    def active(self) -> bool:
        return self._prof is not None

    def start(self, n_steps: int, path: str | Path, cuda: bool = False) -> None:
        if self._prof is not None:
            raise RuntimeError("a profile is already being recorded")
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(activities=activities, record_shapes=True, with_stack=False)
        self._prof.__enter__()
        self._left = max(1, n_steps)
        self._path = Path(path)

    def after_step(self) -> None:
        if self._prof is None:
            return
        self._left -= 1
        if self._left > 0:
            return
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self._path))
        self.last_trace = self._path
