"""Independent tasks run serially or on Dask: one place that knows about schedulers.

Large simulations, batch dose recommendations and many-fit studies are lists of independent
tasks. :func:`run_tasks` runs them and returns their results in input order, and
:func:`iter_tasks` yields them in input order with only a few tasks in flight, so that a caller
can stream large results to a file. Where the tasks run is one argument:

* ``scheduler=None``: serially, in this process;
* ``scheduler="local"``: a Dask ``LocalCluster`` on this machine, one single-threaded worker
  process per core (``workers=`` to choose how many);
* ``scheduler="tcp://host:8786"`` (any Dask scheduler address), or a ``distributed.Client``.

The results never depend on the scheduler, the number of workers or the chunking as long as
every task carries its own seed (derive it per subject or per task, e.g. with
``numpy.random.SeedSequence(seed).spawn(n)``, never from a shared generator).

``dask.distributed`` is imported only when a scheduler is asked for.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import Any

__all__ = ["SchedulerError", "dask_client", "iter_tasks", "run_tasks"]

_CONNECT_TIMEOUT = 10       # seconds to reach a scheduler address before giving up
_PROGRESS_AFTER = 1.0       # seconds before a progress line appears: short runs stay quiet
_IN_FLIGHT_PER_WORKER = 2   # iter_tasks: tasks queued per worker thread, bounding memory


class SchedulerError(RuntimeError):
    """A Dask scheduler could not be started or reached."""


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ImportError('running tasks on Dask needs dask.distributed: pip install "dask[distributed]" '
                          "(or leave the scheduler out to run serially)") from None
    return distributed


def _local_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextmanager
def dask_client(scheduler, *, workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler``, closed (with its local cluster) on exit.

    Parameters
    ----------
    scheduler
        ``"local"`` for a ``LocalCluster`` on this machine, a scheduler address
        (``"tcp://host:8786"``, ``"host:8786"``), or a ``distributed.Client``, which is used
        as it is and left open.
    workers
        Worker processes of the local cluster (default: one per core). Only with ``"local"``.

    Raises
    ------
    SchedulerError
        The address is malformed or no scheduler answered there within 10 s.

    Examples
    --------
    Example::

        with dask_client("local", workers=2) as client:
            print(client.ncores())          # {'tcp://127.0.0.1:...': 1, ...}
    """
    distributed = _distributed()
    if workers is not None and scheduler != "local":
        raise ValueError(f"workers={workers} applies to scheduler='local' only, not {scheduler!r} "
                         "(a remote cluster has the workers its owner started)")
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    if not isinstance(scheduler, str) or not scheduler:
        raise SchedulerError(f"scheduler must be 'local', a Dask scheduler address such as "
                             f"'tcp://host:8786', or a distributed.Client, not {scheduler!r}")
    if scheduler == "local":
        n = workers if workers is not None else _local_cores()
        if n < 1:
            raise ValueError(f"workers must be at least 1, not {n}")
        # one single-threaded process per worker: the simulation and sampling code is CPU-bound
        # Python/numpy that threads would serialise on the GIL. A failing task's error is raised
        # in the caller, so the workers' own logs of it would only repeat it.
        # set_as_default=False here and below: popkin uses its client explicitly, and a default
        # client rewrites dask's global config ("scheduler": "dask.distributed") until it
        # closes; a client closed out of order (a generator of iter_tasks collected late, after
        # the caller's own client) restores the wrong value, and every later dask computation in
        # the process, xarray's netCDF writer among them, asks for a client that is gone.
        with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                      dashboard_address=":0",
                                      silence_logs=logging.CRITICAL) as cluster, \
                distributed.Client(cluster, set_as_default=False) as client:
            yield client
        return
    try:
        client = distributed.Client(scheduler, timeout=_CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, ValueError, TimeoutError) as exc:
        raise SchedulerError(
            f"could not connect to the Dask scheduler at {scheduler!r}: {exc}. Start one there "
            "(`dask scheduler`, then `dask worker ADDRESS` on each machine), or use 'local' for "
            "a cluster on this machine") from exc
    with client:
        yield client


def run_tasks(func: Callable[[Any], Any], items: Iterable, *, scheduler=None,
              workers: int | None = None, progress: bool = False, label: str = "tasks") -> list:
    """``[func(item) for item in items]``, serially or as Dask tasks; results in input order.

    Parameters
    ----------
    func
        A function of one item; on Dask it and the items are pickled (cloudpickle) to the
        workers, so it may be a closure or a ``functools.partial``. It should draw random
        numbers only from a seed carried by its item, so that results do not depend on where
        or in which order tasks run.
    items
        The tasks' arguments, one task per item.
    scheduler
        ``None`` (serial, in this process), ``"local"``, a scheduler address or a
        ``distributed.Client``: see :func:`dask_client`.
    workers
        Worker processes of a ``"local"`` cluster (default: one per core).
    progress
        Show ``label: done/total`` with the elapsed and remaining time on standard error,
        once a run has lasted a second.
    label
        What the tasks are, for the progress line.

    Returns
    -------
    list
        ``func(item)`` for every item, in the order of ``items``. The first task that raises
        raises here with its own exception (the other tasks are cancelled).

    Examples
    --------
    >>> seeds = [11, 12, 13]
    >>> run_tasks(lambda s: s * 2, seeds)
    [22, 24, 26]

    The same on two local worker processes (a few seconds to start the cluster)::

        import numpy as np
        draw = lambda seed: float(np.random.default_rng(seed).normal())
        assert run_tasks(draw, seeds, scheduler="local", workers=2) == run_tasks(draw, seeds)
    """
    items = list(items)
    tracker = _Progress(label, len(items), progress)
    if scheduler is None:
        _check_serial_workers(workers)
        results = []
        for item in items:
            results.append(func(item))
            tracker.advance()
        tracker.close()
        return results
    distributed = _distributed()
    with dask_client(scheduler, workers=workers) as client:
        futures = client.map(_Portable(func), items, pure=False)
        try:
            # the client is not the default (dask_client): as_completed is given its loop
            for future in distributed.as_completed(futures, loop=client.loop):
                if future.status == "error":
                    future.result()         # raises the task's own exception
                tracker.advance()
            results = client.gather(futures)
        finally:
            client.cancel(futures)
    tracker.close()
    return results


def iter_tasks(func: Callable[[Any], Any], items: Iterable, *, scheduler=None,
               workers: int | None = None, progress: bool = False, label: str = "tasks",
               total: int | None = None) -> Iterator:
    """Yield ``func(item)`` for every item in input order, keeping few tasks in flight.

    Like :func:`run_tasks`, but a generator: ``items`` is consumed lazily and, on Dask, at
    most two tasks per worker thread are queued or held, so memory stays bounded by a few
    results whatever the number of items. Meant for streaming large outputs (chunks of a
    simulation) to a file in order.

    Parameters
    ----------
    func, items, scheduler, workers, progress, label
        As for :func:`run_tasks`.
    total
        Number of items, for the progress line when ``items`` has no length.

    Examples
    --------
    >>> chunks = ((start, start + 2) for start in range(0, 6, 2))
    >>> [r for r in iter_tasks(lambda c: list(range(*c)), chunks, total=3)]
    [[0, 1], [2, 3], [4, 5]]
    """
    if total is None and isinstance(items, Sized):
        total = len(items)
    tracker = _Progress(label, total, progress)
    if scheduler is None:
        _check_serial_workers(workers)
        for item in items:
            result = func(item)
            tracker.advance()
            yield result
        tracker.close()
        return
    with dask_client(scheduler, workers=workers) as client:
        limit = _IN_FLIGHT_PER_WORKER * max(1, sum(client.nthreads().values()))
        pending: deque = deque()
        source = iter(items)
        task = _Portable(func)
        try:
            for item in source:
                pending.append(client.submit(task, item, pure=False))
                if len(pending) >= limit:
                    yield _pop_result(pending)
                    tracker.advance()
            while pending:
                yield _pop_result(pending)
                tracker.advance()
        finally:
            client.cancel(list(pending))
    tracker.close()


def _pop_result(pending: deque):
    future = pending.popleft()
    result = future.result()
    future.release()
    return result


class _Portable:
    """``func``, with its exceptions made able to travel back from a worker process.

    An exception whose ``__init__`` takes other arguments than its message (such as
    :class:`~popkin.data.schema.DatasetError`) does not unpickle by default, and Dask would
    then report a deserialisation failure instead of the task's own error.
    """

    def __init__(self, func):
        self.func = func
        self.__name__ = getattr(func, "__name__", type(func).__name__)    # names the Dask keys

    def __call__(self, item):
        try:
            return self.func(item)
        except Exception as exc:
            _make_portable(exc)
            raise


def _make_portable(exc: Exception) -> None:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        state = {k: v for k, v in vars(exc).items() if k != "__reduce_ex__"}
        exc.__reduce_ex__ = lambda protocol: (_rebuild_exception, (type(exc), exc.args, state))


def _rebuild_exception(cls, args, state):
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def _check_serial_workers(workers) -> None:
    if workers is not None:
        raise ValueError(f"workers={workers} needs scheduler='local'; without a scheduler the "
                         "tasks run serially in this process")


class _Progress:
    """``label: done/total (pct) elapsed, ~left`` on standard error, quiet for short runs.

    A long run ends with a line of its totals; on the way, a terminal line is redrawn twice a
    second and a log (standard error not a terminal) gets a line every 10 s.
    """

    def __init__(self, label: str, total: int | None, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.shown = False
        self.tty = sys.stderr.isatty()

    def advance(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.start >= _PROGRESS_AFTER and now - self.last >= (0.5 if self.tty else 10):
            self.last = now
            self._show(now)

    def close(self) -> None:
        now = time.perf_counter()
        if self.enabled and (self.shown or now - self.start >= _PROGRESS_AFTER):
            self._show(now)
            if self.tty:
                sys.stderr.write("\n")
            sys.stderr.flush()

    def _show(self, now: float) -> None:
        elapsed = now - self.start
        text = f"{self.label}: {self.done}"
        if self.total:
            text += f"/{self.total} ({self.done / self.total:.0%})"
        text += f", {_duration(elapsed)} elapsed"
        if self.total and 0 < self.done < self.total:
            text += f", ~{_duration(elapsed / self.done * (self.total - self.done))} left"
        sys.stderr.write(f"\r{text:<72}" if self.tty else text + "\n")
        sys.stderr.flush()
        self.shown = True


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
