"""Virtual trials of any size: a design simulated in chunks of subjects, streamed to a file.

Each chunk goes through :func:`~popkin.simulation.simulate` with ``subject_offset`` set to the
position of its first subject, so every subject keeps its own random stream and the output is
the same as one :func:`simulate` call on the whole design, whatever the chunk size, the
scheduler and the number of workers. Chunks run serially or as Dask tasks
(:mod:`popkin.simulation.distributed`); only a few chunks are in memory at a time, so a trial of
any number of subjects runs in bounded memory.

A trial larger than its design replicates the design's subjects: virtual subject ``k``
(``k = 0, 1, ...``) has the records of design subject ``k mod n_design`` and ID ``k + 1``. Its
records are built chunk by chunk, never as a whole table.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from .._output import staged_file
from ..data.reader import Dataset, read_dataset
from ..data.schema import OBSERVATION
from ..population.spec import ModelSpec, load_model
from .distributed import iter_tasks
from .simulate import simulate

__all__ = ["TrialOutput", "simulate_chunks", "simulate_to_file"]

DEFAULT_CHUNK_SIZE = 2000


@dataclass(frozen=True)
class TrialOutput:
    """What :func:`simulate_to_file` wrote."""

    path: str
    subjects: int
    records: int
    observations: int      # simulated observation records (EVID 0)
    seed: int              # the seed used (drawn at random when none was given)


def simulate_chunks(
    model,
    design,
    *,
    subjects: int | None = None,
    typical: bool = False,
    seed: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scheduler=None,
    workers: int | None = None,
    progress: bool = False,
) -> Iterator[pd.DataFrame]:
    """Simulate ``design`` under ``model`` chunk by chunk: one DataFrame per chunk, in order.

    Concatenated, the chunks equal ``simulate(model, design, typical=typical, seed=seed)``
    (for ``subjects=None``) whatever ``chunk_size``, ``scheduler`` and ``workers``.

    Parameters
    ----------
    model
        A :class:`~popkin.population.spec.ModelSpec`, a TOML file or a library model name.
    design
        Dataset, DataFrame or CSV path: dosing records and the records to predict.
    subjects
        Number of virtual subjects; subject ``k`` has the records of design subject
        ``k mod n_design`` and ID ``k + 1``. ``None``: the design's own subjects and IDs.
    typical, seed
        As for :func:`~popkin.simulation.simulate`. Without a seed, one is drawn at random
        for the whole trial.
    chunk_size
        Subjects per chunk (and per task on Dask).
    scheduler, workers, progress
        Where the chunks run (``None`` serially, ``"local"``, a Dask scheduler address) and
        whether to show progress: see :func:`~popkin.simulation.run_tasks`.

    Yields
    ------
    DataFrame
        The records of ``chunk_size`` subjects (fewer in the last chunk) with ``PRED``,
        ``IPRED`` and a simulated ``DV``.

    Examples
    --------
    >>> design = pd.DataFrame({"ID": [1, 1, 2, 2], "TIME": [0.0, 2.0, 0.0, 2.0],
    ...                        "AMT": [320.0, 0, 320.0, 0], "WT": [70.0, 70.0, 55.0, 55.0]})
    >>> chunks = list(simulate_chunks("theophylline", design, subjects=5, seed=1, chunk_size=2))
    >>> [c["ID"].unique().tolist() for c in chunks]
    [[1, 2], [3, 4], [5]]
    >>> whole = simulate("theophylline", design, seed=1)
    >>> pd.concat(chunks[:1], ignore_index=True).equals(whole)
    True
    """
    tasks, _ = _plan(model, design, subjects=subjects, typical=typical, seed=seed,
                     chunk_size=chunk_size, fmt=None)
    yield from iter_tasks(_run_chunk, tasks, scheduler=scheduler, workers=workers,
                          progress=progress, label="simulation chunks", total=len(tasks))


def simulate_to_file(
    model,
    design,
    out: str | os.PathLike,
    *,
    subjects: int | None = None,
    typical: bool = False,
    seed: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    scheduler=None,
    workers: int | None = None,
    progress: bool = False,
    fmt: Literal["csv", "parquet"] | None = None,
) -> TrialOutput:
    """Simulate ``design`` under ``model`` in chunks, streaming them to ``out`` (CSV or Parquet).

    Memory is bounded by a few chunks whatever the number of subjects. The file is written
    beside ``out`` under a temporary name and renamed at the end: it appears complete or not
    at all. The CSV is the same, byte for byte, as
    ``write_table(simulate(model, design, ...), out)``; the Parquet file holds the same table
    (one row group per chunk).

    Parameters
    ----------
    model, design, subjects, typical, seed, chunk_size, scheduler, workers, progress
        As for :func:`simulate_chunks`.
    out
        Output file; ``.parquet`` gives Parquet, anything else CSV (``.`` for missing values).
    fmt
        ``"csv"`` or ``"parquet"`` whatever the file name says.

    Returns
    -------
    TrialOutput
        The path, the numbers of subjects, records and simulated observations, and the seed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> design = pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 2.0], "AMT": [320.0, 0],
    ...                        "WT": [70.0, 70.0]})
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> done = simulate_to_file("theophylline", design, folder / "trial.parquet",
    ...                         subjects=1000, seed=3, chunk_size=250)
    >>> done.subjects, done.records, done.observations
    (1000, 2000, 1000)
    >>> len(pd.read_parquet(folder / "trial.parquet"))
    2000

    On a local Dask cluster (the same file, a few seconds to start the cluster)::

        simulate_to_file("theophylline", design, "trial.parquet", subjects=100_000, seed=3,
                         scheduler="local", progress=True)
    """
    path = os.fspath(out)
    fmt = fmt or ("parquet" if path.endswith(".parquet") else "csv")
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', not {fmt!r}")
    tasks, seed = _plan(model, design, subjects=subjects, typical=typical, seed=seed,
                        chunk_size=chunk_size, fmt=fmt)
    chunks = iter_tasks(_run_chunk, tasks, scheduler=scheduler, workers=workers,
                        progress=progress, label="simulation chunks", total=len(tasks))
    n_subjects = n_records = n_observations = 0
    with closing(chunks), staged_file(path) as tmp:
        writer = _CsvWriter(tmp) if fmt == "csv" else _ParquetWriter(tmp)
        try:
            for chunk in chunks:
                writer.write(chunk.payload)
                n_subjects += chunk.subjects
                n_records += chunk.records
                n_observations += chunk.observations
        finally:
            writer.close()
    return TrialOutput(path, n_subjects, n_records, n_observations, seed)


# -- planning: the whole design checked once, then chunks built lazily -------------------------

@dataclass(frozen=True)
class _ChunkTask:
    spec: ModelSpec
    data: Dataset
    offset: int                # position of the chunk's first subject in the trial
    typical: bool
    seed: int
    fmt: str | None            # None: return the DataFrame; "csv"/"parquet": encode it


@dataclass(frozen=True)
class _EncodedChunk:
    payload: object            # CSV text or a pyarrow Table
    subjects: int
    records: int
    observations: int


class _Tasks:
    """The chunk tasks of a trial, built one at a time as they are consumed."""

    def __init__(self, spec, data, n_subjects, chunk_size, replicate, typical, seed, fmt):
        self.spec, self.data, self.n_subjects = spec, data, n_subjects
        self.chunk_size, self.replicate = chunk_size, replicate
        self.typical, self.seed, self.fmt = typical, seed, fmt
        ids = data.records["ID"].to_numpy()
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        self.bounds = np.r_[starts, len(ids)]          # records of design subject j: bounds[j]:bounds[j+1]

    def __len__(self) -> int:
        return -(-self.n_subjects // self.chunk_size)

    def __iter__(self) -> Iterator[_ChunkTask]:
        for start in range(0, self.n_subjects, self.chunk_size):
            stop = min(start + self.chunk_size, self.n_subjects)
            yield _ChunkTask(self.spec, self._chunk_data(start, stop), start, self.typical,
                             self.seed, self.fmt)

    def _chunk_data(self, start: int, stop: int) -> Dataset:
        records = self.data.records
        if not self.replicate:
            part = records.iloc[self.bounds[start]:self.bounds[stop]].reset_index(drop=True)
            return dataclasses.replace(self.data, records=part)
        design_subject = np.arange(start, stop) % (len(self.bounds) - 1)
        first, counts = self.bounds[design_subject], np.diff(self.bounds)[design_subject]
        # record positions of each design subject in turn: first[j], first[j] + 1, ...
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        part = records.iloc[np.repeat(first, counts) + within].reset_index(drop=True)
        part["ID"] = np.repeat(np.arange(start, stop, dtype=np.int64) + 1, counts)
        return dataclasses.replace(self.data, records=part)


def _plan(model, design, *, subjects, typical, seed, chunk_size, fmt) -> tuple[_Tasks, int]:
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of subjects, not {chunk_size!r}")
    if subjects is not None and (not isinstance(subjects, (int, np.integer)) or subjects < 1):
        raise ValueError(f"subjects must be a positive number of virtual subjects, not {subjects!r}")
    spec = load_model(model)
    data = design if isinstance(design, Dataset) else read_dataset(design)
    spec.check_time_constant(data)
    spec = _impute_from_whole_design(spec, data)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))
    n = data.n_subjects if subjects is None else int(subjects)
    return _Tasks(spec, data, n, int(chunk_size), subjects is not None, typical, seed, fmt), seed


def _impute_from_whole_design(spec: ModelSpec, data: Dataset) -> ModelSpec:
    """``spec`` with each ``impute = "median"`` replaced by the median over the whole design.

    A median taken chunk by chunk would depend on the chunking.
    """
    median_effects = [(p.name, e.covariate) for p in spec.parameters for e in p.covariates
                      if e.impute == "median" and not e.has_levels]
    if not median_effects:
        return spec
    raw = _with_effects(spec, lambda p, e: dataclasses.replace(e, impute=None)
                        if (p.name, e.covariate) in median_effects else e)
    encoded = raw.covariate_design(data)

    def fixed(p, e):
        if (p.name, e.covariate) not in median_effects:
            return e
        values = encoded[(p.name, e.covariate)]
        known = values[~np.isnan(values)]
        return dataclasses.replace(e, impute=float(np.median(known)) if len(known) else "reference")

    return _with_effects(spec, fixed)


def _with_effects(spec: ModelSpec, change) -> ModelSpec:
    parameters = tuple(dataclasses.replace(p, covariates=tuple(change(p, e) for e in p.covariates))
                       for p in spec.parameters)
    return dataclasses.replace(spec, parameters=parameters)


# -- one chunk (runs in a worker) -------------------------------------------------------------

def _run_chunk(task: _ChunkTask):
    table = simulate(task.spec, task.data, typical=task.typical, seed=task.seed,
                     subject_offset=task.offset)
    if task.fmt is None:
        return table
    if task.fmt == "csv":
        # formatted here, in the worker, as write_table formats a whole table
        text = io.StringIO()
        table.to_csv(text, index=False, header=task.offset == 0, na_rep=".", float_format="%.10g")
        payload = text.getvalue()
    else:
        import pyarrow as pa

        payload = pa.Table.from_pandas(table, preserve_index=False)
    return _EncodedChunk(payload, task.data.n_subjects, len(table),
                         int((table["EVID"] == OBSERVATION).sum()))


# -- output -----------------------------------------------------------------------------------

class _CsvWriter:
    def __init__(self, path: str):
        self.file = open(path, "w", newline="")

    def write(self, text: str) -> None:
        self.file.write(text)

    def close(self) -> None:
        self.file.close()


class _ParquetWriter:
    def __init__(self, path: str):
        self.path = path
        self.writer = None

    def write(self, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            # a column missing throughout the first chunk has Arrow type null: take it as text
            schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f
                                for f in table.schema], metadata=table.schema.metadata)
            self.writer = pq.ParquetWriter(self.path, schema)
        if not table.schema.equals(self.writer.schema, check_metadata=False):
            try:
                table = table.cast(self.writer.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(f"{self.path}: a chunk's columns do not have the types of the "
                                 f"first chunk's ({exc}); write CSV instead") from exc
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
