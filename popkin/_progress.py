"""What a long command is doing, told on standard error.

A fit says each stage as it begins (building the model, compiling the sampler, finding a start,
sampling, writing the report). While it samples, a terminal gets nutpie's own progress bar;
output that is not a terminal (a log file, a pipe, a CI job) gets plain lines instead, at most
one every ``interval`` seconds, with no control characters.

>>> import io
>>> out = io.StringIO()
>>> progress = Progress(stream=out, clock=iter([0.0, 0.0, 1.5]).__next__)
>>> progress.stage("compiling the sampler")
>>> progress.stage("sampling 2 chains x (100 tuning + 100 draws)")
>>> print(out.getvalue(), end="")
[0.0 s] compiling the sampler
[1.5 s] sampling 2 chains x (100 tuning + 100 draws)
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

__all__ = ["Progress", "as_progress"]

INTERVAL = 10.0


class Progress:
    """Stage lines and sampling progress for one command.

    Parameters
    ----------
    enabled
        False: say nothing (``--quiet``, or a library call with ``progress=False``).
    stream
        Where to write (standard error by default).
    interval
        Seconds between two plain progress lines while sampling.
    clock
        Seconds since an arbitrary origin (for tests).
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None,
                 interval: float = INTERVAL, clock: Callable[[], float] = time.perf_counter):
        self.stream = stream if stream is not None else sys.stderr
        # no standard error (closed when Python started: sys.stderr is None) means nowhere to
        # say it; print() would otherwise write it into standard output, among the results
        self.enabled = bool(enabled) and self.stream is not None
        self.interval = float(interval)
        self._clock = clock
        self._began = clock()
        self._last_line = -float("inf")

    @property
    def terminal(self) -> bool:
        """Whether the stream is a terminal (where a redrawn progress bar makes sense)."""
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:          # a closed stream
            return False

    def _say(self, text: str) -> None:
        elapsed = self._clock() - self._began
        print(f"[{elapsed:.1f} s] {text}", file=self.stream, flush=True)

    def stage(self, text: str) -> None:
        """Say that a stage begins."""
        if self.enabled:
            self._say(text)

    def sampler_options(self) -> dict:
        """nutpie's progress options: its bar on a terminal, plain lines otherwise, or none."""
        if not self.enabled:
            return {"progress_bar": False}
        if self.terminal:
            return {"progress_bar": True}
        return {"progress_bar": False, "progress_callback": self._chains,
                "progress_rate": 1000}

    def _chains(self, chains) -> None:
        """nutpie's callback: a list of per-chain progress objects."""
        done = sum(int(c.finished_draws) for c in chains)
        total = sum(int(c.total_draws) for c in chains)
        now = self._clock()
        finished = total > 0 and done >= total
        if not finished and now - self._last_line < self.interval:
            return
        if finished and self._last_line == float("inf"):
            return                                   # the last line was already said
        self._last_line = float("inf") if finished else now
        tuning = sum(bool(c.tuning) for c in chains)
        divergences = sum(int(c.divergences) for c in chains)
        phase = f", {tuning} chain(s) tuning" if tuning and not finished else ""
        share = 100.0 * done / total if total else 100.0
        self._say(f"sampling: {done}/{total} draws ({share:.0f}%){phase}, "
                  f"{divergences} divergent")


def as_progress(progress) -> Progress:
    """A :class:`Progress` from what a caller passed: one already made, or a bool."""
    if isinstance(progress, Progress):
        return progress
    return Progress(enabled=bool(progress))
