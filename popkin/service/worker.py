"""Recommendations computed away from the web server: a pool of worker processes.

Sampling a patient's posterior is CPU-bound numerical work (PyTensor, nutpie, numba), so it
runs in separate processes, never in the web server's threads: pages stay responsive while
recommendations run, and several users are served at once (``--workers``, two by default on
a two-core machine). Each worker keeps what it compiled (popkin's compiled-model cache,
:mod:`popkin.dosing.posterior`), so only a worker's first recommendation with a model pays
for compilation; the next ones take the compiled time.

A job is everything the recommendation needs, written down before it runs
(:func:`job_payload`): the model specs' text (not their names, so a re-run months later uses
the same model even after the library changed), the patient's records as they were, the
options and the seed. Re-running the stored payload gives the same answer.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import pandas as pd

#: Fields of ``recommendation.json`` that describe the run, not the answer: left out when a
#: re-run is compared with the original.
RUN_FIELDS = ("seconds", "timings")


def spec_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def job_payload(models: list[dict], records_csv: str, options: dict, seed: int,
                method: str) -> dict:
    """What a worker runs: ``models`` as ``[{"name", "source", "spec_text"}]``."""
    return {"models": [{**m, "spec_hash": spec_hash(m["spec_text"])} for m in models],
            "records_csv": records_csv, "options": options, "seed": int(seed),
            "method": method}


def answer(result_json: str) -> dict:
    """A recommendation's answer: ``recommendation.json`` without :data:`RUN_FIELDS`."""
    result = json.loads(result_json)
    for key in RUN_FIELDS:
        result.pop(key, None)
    return result


def run(payload: dict) -> dict:
    """Compute one recommendation (in a worker process). Returns the outputs, or
    ``{"error": message}`` for an input popkin refuses (the message is the one the command
    line would print)."""
    from ..data import read_dataset
    from ..data.schema import DatasetError
    from ..dosing import recommend
    from ..population.spec import SpecError, load_model
    from ..report.dose_report import dose_report_html, dose_report_pdf, report_figures

    started = time.perf_counter()
    try:
        for model in payload["models"]:
            if spec_hash(model["spec_text"]) != model["spec_hash"]:
                raise SpecError(f"model {model['name']}: its stored text does not match its "
                                "hash; the record was altered")
        specs = [_fit_source(m) if "fit_path" in m
                 else replace(load_model(m["spec_text"]), source=m["source"])
                 for m in payload["models"]]
        records = read_dataset(pd.read_csv(io.StringIO(payload["records_csv"]),
                                           keep_default_na=True))
        rec = recommend(specs[0] if len(specs) == 1 else specs, records,
                        method=payload["method"], seed=payload["seed"], **payload["options"])
        figures = report_figures(rec)
        outputs = {"result_json": rec.to_json(), "report_html": dose_report_html(rec, figures),
                   "report_pdf": dose_report_pdf(rec, figures),
                   "figure_png": figures["concentration"]}
    except (DatasetError, SpecError, ValueError) as error:
        return {"error": str(error)}
    outputs["seconds"] = time.perf_counter() - started
    return outputs


def _fit_source(model: dict) -> str:
    """A fit folder, checked to be the one the recommendation was asked with."""
    from pathlib import Path

    from ..population.spec import SpecError
    from .forms import fit_hash

    folder = Path(model["fit_path"])
    try:
        same = fit_hash(folder) == model["fit_hash"]
    except OSError:
        same = False
    if not same:
        raise SpecError(f"{model['name']}: the fit folder is gone or changed since this "
                        "recommendation was asked; it cannot be re-run from it")
    return str(folder)


def _start_worker() -> None:
    # one BLAS thread per worker: the workers are the parallelism
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` processes, started fresh (spawn: no state copied from the web server's
    threads)."""
    return ProcessPoolExecutor(max_workers=workers, initializer=_start_worker,
                               mp_context=multiprocessing.get_context("spawn"))
