r"""Candidate regimens and their predicted exposure over posterior draws.

Options (the ``[dosing]`` table of a spec, each overridable from the API and the command line)
-------------------------------------------------------------------------------------------
================ ======================================================== ==================
key              meaning                                                  default
================ ======================================================== ==================
``route``        ``"oral"``, ``"iv_bolus"`` or ``"infusion"``              the patient's last
                                                                          dose, else oral for
                                                                          oral structures,
                                                                          IV bolus otherwise
``amount_step``  doses are multiples of this (the available strength)     a round number near
                                                                          1/5 of the last dose
``amount_range`` ``[low, high]`` of the maintenance dose                  one step to 3 x the
                                                                          last dose
``intervals``    dosing intervals to consider (model time unit)           the current one and
                                                                          8, 12, 24 h
``durations``    infusion durations (route ``infusion``)                  the last infusion's,
                                                                          else 1 h
``target``       default target, e.g. ``"auc24:400-600"``                 none
``limit``        default limit, e.g. ``"trough:<20"``                     none
================ ======================================================== ==================

A candidate is ``(amount, interval, duration)`` with an optional loading dose at the start of
the new regimen (the first maintenance dose then follows one interval later).

Predictions
-----------
Candidates are predicted for all posterior draws at once: the draws are the subjects of one
event table (:func:`tile_events` repeats a candidate's events per draw without rebuilding
them) and the structure's own ``predict`` evaluates it, the same code as ``popkin.simulate``.
When the structure superposes doses (:func:`superposes`: the closed forms, and ODE systems
linear and homogeneous in their states such as transit or Erlang absorption into linear
disposition) the concentration is linear in each dose amount, so each (interval, duration)
shape is predicted once per unit maintenance dose, once per unit loading dose and once for
the patient's history, and the candidates are exact linear combinations of these (an ODE
structure solves a few unit regimens instead of every candidate). Other ODE structures
(saturable elimination, a turnover response) are predicted candidate by candidate; their
steady-state windows leave the history out, which a steady state does not remember.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.events import EventTable, build_event_table
from ..data.reader import Dataset, read_dataset
from ..population.covariates import SpecError
from ..population.spec import ModelSpec
from ..structural.linear import LinearCompartmentModel
from .targets import Profile, Target

__all__ = ["DosingOptions", "Candidate", "dosing_options", "candidates", "tile_events",
           "hours_per_unit", "ROUTES"]

ROUTES = ("oral", "iv_bolus", "infusion")
_KEYS = {"route", "amount_step", "amount_range", "intervals", "durations", "target", "limit"}
_HOURS = {"h": 1.0, "hr": 1.0, "hrs": 1.0, "hour": 1.0, "hours": 1.0, "min": 1 / 60,
          "minute": 1 / 60, "minutes": 1 / 60, "s": 1 / 3600, "d": 24.0, "day": 24.0,
          "days": 24.0, "week": 168.0, "weeks": 168.0}
_MAX_CANDIDATES = 2000
#: Most maintenance doses one evaluation window may hold (up to the end of a target's day):
#: every draw of every candidate superposes them, so the work grows with their number.
MAX_WINDOW_DOSES = 3000
#: Most (dose, time point) pairs times posterior draws one recommendation may superpose: about
#: ten minutes of work on one core. Evaluated in chunks of ``_CHUNK_PAIRS`` (memory, ~0.6 GB).
MAX_PAIR_DRAWS = 300_000_000
_CHUNK_PAIRS = 4_000_000
#: Most concentrations (candidates x draws x grid points) held at once for a day-N target.
MAX_PROFILE_VALUES = 100_000_000
_GRID = 64          # sub-intervals per grid segment (even: Simpson's rule)


def hours_per_unit(spec: ModelSpec) -> float:
    """Hours in one unit of the spec's time (hours when the spec gives no unit)."""
    unit = str(spec.units.get("time", "h")).strip().lower()
    if unit not in _HOURS:
        raise SpecError(f"{spec.source}: [model.units] time {unit!r} is not a known time unit "
                        f"({', '.join(sorted(_HOURS))})")
    return _HOURS[unit]


@dataclass(frozen=True)
class DosingOptions:
    route: str
    amount_step: float
    amount_range: tuple[float, float]
    intervals: tuple[float, ...]
    durations: tuple[float, ...]
    target: tuple[str, ...] = ()
    limit: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    amount: float
    interval: float
    duration: float          # 0 unless infused
    route: str
    loading_dose: float | None = None

    @property
    def doses_per_day(self) -> float:
        return 24.0 / self.interval

    def describe(self, units: Mapping) -> str:
        amount, time = units.get("amount", ""), units.get("time", "")
        text = f"{self.amount:g} {amount} every {self.interval:g} {time}"
        if self.route == "infusion":
            text += f" as a {self.duration:g}-{time} infusion"
        elif self.route == "oral":
            text += " orally"
        else:
            text += " IV bolus"
        if self.loading_dose:
            text = f"loading dose {self.loading_dose:g} {amount}, then " + text
        return text


def _number_list(value, where, *, positive=True) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(f"{where}: must be a number or a non-empty list of numbers, not {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
                positive and v <= 0):
            raise SpecError(f"{where}: {v!r} is not a positive number")
        out.append(float(v))
    return tuple(sorted(set(out)))


def _nice_step(x: float) -> float:
    """A round number (1, 2, 2.5 or 5 times a power of ten) close to ``x``."""
    power = 10 ** math.floor(math.log10(x))
    return min((m * power for m in (1, 2, 2.5, 5, 10)), key=lambda s: abs(math.log(s / x)))


@dataclass(frozen=True)
class PatientRegimen:
    """What the patient is on: the last dose's amount, interval, duration and route."""

    amount: float | None = None
    interval: float | None = None
    duration: float = 0.0
    route: str | None = None
    last_dose_time: float | None = None


def current_regimen(spec: ModelSpec, patient: Dataset) -> PatientRegimen:
    r = patient.records
    doses = r[r["EVID"].isin((1, 4)) & (r["AMT"] > 0)]
    if doses.empty:
        return PatientRegimen()
    last = doses.iloc[-1]
    interval = float(last["II"]) if last["II"] > 0 else None
    if interval is None and len(doses) > 1:
        gap = float(doses["TIME"].iloc[-1] - doses["TIME"].iloc[-2])
        interval = gap if gap > 0 else None
    infused = last["RATE"] > 0 or last["RATE"] == -2
    duration = 0.0
    if infused:
        duration = float(last["DUR"]) if last["RATE"] == -2 else float(last["AMT"] / last["RATE"])
    # an ODE structure has no depot of its own: a dose into its dose compartment is given by
    # the route of the spec's [dosing] table
    oral_structure = getattr(spec.structure, "oral", spec.dosing.get("route") == "oral")
    cmt = last["CMT"]
    into_depot = oral_structure and (np.isnan(cmt) or cmt in (0, spec.structure.dose_compartment))
    route = "infusion" if infused else ("oral" if into_depot else "iv_bolus")
    last_time = float(last["TIME"]) + (float(last["II"]) * int(last["ADDL"]) if last["ADDL"] else 0.0)
    return PatientRegimen(float(last["AMT"]), interval, duration, route, last_time)


def dosing_options(spec: ModelSpec, current: PatientRegimen, **overrides) -> DosingOptions:
    """The ``[dosing]`` table checked, completed by defaults, and overridden by ``overrides``
    (keys of the table; ``None`` leaves a key alone)."""
    table = dict(spec.dosing)
    where = f"{spec.source}: [dosing]"
    extra = set(table) - _KEYS
    if extra:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(extra))} "
                        f"(allowed: {', '.join(sorted(_KEYS))})")
    sources = {key: f"{where}.{key}" for key in table}
    for key, value in overrides.items():
        if key not in _KEYS:
            raise TypeError(f"unknown dosing option {key!r} (options: {', '.join(sorted(_KEYS))})")
        if value is not None:
            table[key] = value
            sources[key] = f"dosing option {key}"

    def at(key):
        return sources.get(key, f"{where}.{key}")

    hours = hours_per_unit(spec)
    route = table.get("route") or current.route or (
        "oral" if getattr(spec.structure, "oral", False) else "iv_bolus")
    if route not in ROUTES:
        raise SpecError(f"{at('route')}: route must be one of {', '.join(ROUTES)}, not {route!r}")
    if route == "oral" and not getattr(spec.structure, "oral", True):
        raise SpecError(f"{at('route')}: route \"oral\" needs a structure with an absorption "
                        f"depot; {spec.structure.name!r} has none")
    declared = spec.dosing.get("route")
    if (not isinstance(spec.structure, LinearCompartmentModel) and declared in ROUTES
            and (route == "oral") != (declared == "oral")):
        # an ODE structure has one dose compartment; the spec's route says what it is
        raise SpecError(f"{at('route')}: model {spec.name!r} takes every dose into its dose "
                        f"compartment, which its [dosing] table declares as route {declared!r}; "
                        f"route {route!r} would be given there too. Use route {declared!r}, or "
                        "a model with a compartment for this route")
    if "amount_step" in table:
        step = _number_list(table["amount_step"], at("amount_step"))
        if len(step) != 1:
            raise SpecError(f"{at('amount_step')}: one number, the dose step (strength)")
        step = step[0]
    elif current.amount:
        step = _nice_step(current.amount / 5)
    elif "amount_range" in table:
        rng = _number_list(table["amount_range"], at("amount_range"))
        step = _nice_step(max(rng) / 20)
    else:
        raise SpecError(f"{where}: the patient has no dose and the model gives no amount_range; "
                        "give the dose range and step (--amount-range LOW,HIGH --amount-step S)")
    if "amount_range" in table:
        value = table["amount_range"]
        if not (isinstance(value, (list, tuple)) and len(value) == 2):
            raise SpecError(f"{at('amount_range')}: must be [low, high], not {value!r}")
        low, high = (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                     else math.nan for v in value)
        if not (low > 0 and high >= low and math.isfinite(high)):
            raise SpecError(f"{at('amount_range')}: must be [low, high] with 0 < low <= high, "
                            f"not {list(value)!r}")
    else:
        base = current.amount or step * 10
        low, high = step, max(3 * base, step)
    if high < step:
        raise SpecError(f"{at('amount_step')}: the step {step:g} is larger than the highest dose "
                        f"{high:g}; no dose can be given")
    if "intervals" in table:
        intervals = _number_list(table["intervals"], at("intervals"))
    else:
        intervals = {8 / hours, 12 / hours, 24 / hours}
        if current.interval:
            intervals.add(current.interval)
        intervals = tuple(sorted(intervals))
    if route == "infusion":
        if "durations" in table:
            durations = _number_list(table["durations"], at("durations"))
        else:
            durations = (current.duration if current.route == "infusion" and current.duration
                         else 1 / hours,)
        too_long = [d for d in durations if d >= min(intervals)]
        if too_long:
            raise SpecError(f"{at('durations')}: an infusion of {too_long[0]:g} does not fit in "
                            f"the interval {min(intervals):g}; shorten it or drop the interval")
    else:
        durations = (0.0,)
    targets = table.get("target", ())
    limits = table.get("limit", ())
    return DosingOptions(route, step, (low, high), intervals, durations,
                         tuple([targets] if isinstance(targets, str) else targets),
                         tuple([limits] if isinstance(limits, str) else limits))


def candidates(options: DosingOptions, loading_doses: Sequence[float] = ()) -> list[Candidate]:
    """Every combination of amount, interval, duration (and loading dose)."""
    step = options.amount_step
    low, high = options.amount_range
    first = max(math.ceil(low / step - 1e-9), 1)
    last = math.floor(high / step + 1e-9)
    if last < first:
        raise SpecError(f"no dose between {low:g} and {high:g} is a multiple of the step {step:g}")
    loads = [None] + [float(x) for x in loading_doses] if loading_doses else [None]
    count = (last - first + 1) * len(options.intervals) * len(options.durations) * len(loads)
    if count > _MAX_CANDIDATES:
        # counted before the list is built: a tiny step would not fit in memory
        raise SpecError(f"{count} candidate regimens (more than {_MAX_CANDIDATES}); use a larger "
                        "amount step, a narrower amount range or fewer intervals")
    amounts = [round(k * step, 10) for k in range(first, last + 1)]
    return [Candidate(a, t, d, options.route, load)
            for t in options.intervals for d in options.durations for load in loads
            for a in amounts]


# -- event tables ---------------------------------------------------------------------------

def tile_events(events: EventTable, n: int) -> EventTable:
    """``events`` repeated ``n`` times as new subjects (draw-major), without rebuilding it."""
    ns = events.n_subjects
    epochs = int(max(events.dose_epoch.max(initial=0), events.point_epoch.max(initial=0))) + 1
    orders = int(max(events.dose_order.max(initial=0), events.point_order.max(initial=0))) + 1
    k_d = np.repeat(np.arange(n), events.n_doses)
    k_p = np.repeat(np.arange(n), events.n_points)

    def tile(a):
        return np.tile(a, n)

    return EventTable(
        subjects=list(range(n * ns)),
        dose_subject=tile(events.dose_subject) + k_d * ns, dose_time=tile(events.dose_time),
        dose_amt=tile(events.dose_amt), dose_rate=tile(events.dose_rate),
        dose_duration=tile(events.dose_duration), dose_ii=tile(events.dose_ii),
        dose_ss=tile(events.dose_ss), dose_cmt=tile(events.dose_cmt),
        dose_epoch=tile(events.dose_epoch) + k_d * epochs,
        dose_order=tile(events.dose_order) + k_d * orders, dose_row=tile(events.dose_row),
        point_subject=tile(events.point_subject) + k_p * ns, point_time=tile(events.point_time),
        point_evid=tile(events.point_evid), point_dvid=tile(events.point_dvid),
        point_dv=tile(events.point_dv), point_mdv=tile(events.point_mdv),
        point_lloq=tile(events.point_lloq), point_epoch=tile(events.point_epoch) + k_p * epochs,
        point_order=tile(events.point_order) + k_p * orders, point_row=tile(events.point_row),
        point_record=tile(events.point_record))


def _dose_rows(times, amount, route, duration, cmt_central, *, ss=0, ii=0.0):
    rows = []
    for t in times:
        row = {"TIME": t, "AMT": amount, "EVID": 1, "MDV": 1, "SS": ss, "II": ii,
               "RATE": 0.0, "DUR": 0.0, "CMT": np.nan}
        if route == "infusion":
            row.update(RATE=-2.0, DUR=duration, CMT=cmt_central)
        elif route == "iv_bolus":
            row.update(CMT=cmt_central)
        rows.append(row)
    return rows


def superposes(spec: ModelSpec) -> bool:
    """Whether the spec's predictions are linear in the dose amounts (see the module
    docstring); structures that do not say are assumed not to."""
    return bool(getattr(spec.structure, "superposition", False))


def central_compartment(spec: ModelSpec) -> int:
    s = spec.structure
    return s.central if isinstance(s, LinearCompartmentModel) else s.dose_compartment


@dataclass(frozen=True)
class Window:
    """Where one (interval, duration) shape is read: grid points, breakpoints, windows."""

    times: np.ndarray                   # grid, relative to the start of the new regimen
    before: np.ndarray                  # whether each grid point precedes a dose at its time
    segments: tuple[tuple[int, int], ...]
    interval: tuple[float, float]
    day: tuple[float, float]
    maintenance: tuple[float, ...]      # maintenance dose times (relative)
    loading: float | None               # loading dose time (relative) or None
    steady_state: bool


def window(interval: float, duration: float, when: str, hours: float, loading: bool) -> Window:
    """The evaluation grid of a shape; times are relative to the start of the new regimen
    (steady state: to a dose of the steady-state train)."""
    if when == "ss":
        breaks = sorted({0.0, interval / 8, interval}
                        | ({duration} if 0 < duration < interval else set()))
        return _grid(breaks, set(), (0.0, interval), (0.0, hours), (0.0,), None, True)
    day = int(when[3:])
    day_start, day_end = (day - 1) * hours, day * hours
    first = interval if loading else 0.0
    needed = (max(day_end, first) - first) / interval + 2
    if needed > MAX_WINDOW_DOSES:
        raise SpecError(f"a target on day {day} with a dosing interval of {interval:g} needs about "
                        f"{needed:.0f} doses, more than the limit of {MAX_WINDOW_DOSES}; read the "
                        "target earlier, at steady state (@ss), or use a longer interval")
    given = [0.0] if loading else []
    k = 0
    while first + k * interval < day_end - 1e-9:
        given.append(first + k * interval)
        k += 1
    last = max(given)                      # the last dose that starts within the day
    upper = max(day_end, last + interval)
    maintenance = [first + j * interval for j in range(int((upper - first) / interval) + 1)]
    doses = sorted(set(maintenance) | ({0.0} if loading else set()))
    breaks = {0.0, day_start, day_end, upper}
    for d in doses:
        breaks.update((d, d + interval / 8))
        if duration > 0 and d + duration <= upper:
            breaks.add(d + duration)
    # the grid covers what the metrics read (the day and the dosing interval), not the course
    # before it: the doses before it are in the event table all the same
    lower = min(day_start, last)
    breaks = sorted(b for b in breaks if lower - 1e-9 <= b <= upper + 1e-9)
    return _grid(breaks, set(doses), (last, last + interval), (day_start, day_end),
                 tuple(maintenance), 0.0 if loading else None, False)


def _grid(breaks, dose_times, interval, day, maintenance, loading, steady_state) -> Window:
    times, before, segments = [], [], []
    for a, b in zip(breaks[:-1], breaks[1:]):
        if b - a <= 1e-12:
            continue
        start = len(times)
        pts = np.linspace(a, b, _GRID + 1)
        times.extend(pts)
        # the segment's last point is the left limit at b: before any dose at b
        before.extend([False] * _GRID + [any(abs(b - d) < 1e-9 for d in dose_times)])
        segments.append((start, len(times)))
    return Window(np.asarray(times), np.asarray(before), tuple(segments), interval, day,
                  tuple(maintenance), loading, steady_state)


def window_events(spec: ModelSpec, win: Window, route: str, duration: float, interval: float,
                  *, maintenance: float, loading: float | None,
                  history: pd.DataFrame | None = None, start: float = 0.0) -> EventTable:
    """One subject: the new regimen (and the history, shifted so the regimen starts at 0),
    with a point at every grid time."""
    central = central_compartment(spec)
    rows = []
    if history is not None:
        h = history.copy()
        h["TIME"] = h["TIME"] - start
        rows.extend(h.to_dict("records"))
    if win.steady_state:
        rows.extend(_dose_rows([0.0], maintenance, route, duration, central, ss=1, ii=interval))
    else:
        if loading:
            rows.extend(_dose_rows([win.loading], loading, route, duration, central))
        if maintenance:
            rows.extend(_dose_rows(win.maintenance, maintenance, route, duration, central))
    dose_frame = pd.DataFrame(rows)
    points = pd.DataFrame({"TIME": win.times, "AMT": 0.0, "EVID": 0, "MDV": 1, "SS": 0, "II": 0.0,
                           "RATE": 0.0, "DUR": 0.0, "CMT": np.nan,
                           # points before a dose at the same time come first (a trough)
                           "_key": np.where(win.before, 0, 2)})
    dose_frame["_key"] = 1
    frame = pd.concat([dose_frame, points], ignore_index=True)
    frame = frame.sort_values(["TIME", "_key"], kind="stable").drop(columns="_key")
    frame = frame[[c for c in frame.columns if c in ("TIME", "AMT", "EVID", "MDV", "SS", "II",
                                                     "RATE", "DUR", "CMT", "DV", "ADDL")]]
    frame.insert(0, "ID", 1)
    data = read_dataset(frame)
    return build_event_table(data, spec.structure, points="observations")


def history_doses(patient: Dataset, start: float) -> pd.DataFrame:
    """The patient's dose and reset records, with implied (ADDL) doses from ``start`` on
    dropped: the new regimen replaces them."""
    r = patient.records
    h = r[r["EVID"].isin((1, 3, 4))][["TIME", "AMT", "EVID", "RATE", "DUR", "II", "ADDL", "SS",
                                      "CMT"]].copy()
    h = h[h["TIME"] < start]
    implied = h["ADDL"] > 0
    kept = np.floor((start - h["TIME"] - 1e-9) / h["II"].where(implied, 1.0)).clip(lower=0)
    h.loc[implied, "ADDL"] = np.minimum(h.loc[implied, "ADDL"], kept[implied]).astype(int)
    h["MDV"] = 1
    return h


_UNIT_TABLES: dict[tuple, EventTable] = {}


def unit_events(spec: ModelSpec, win: Window, route: str, duration: float, interval: float, *,
                maintenance: float, loading: float | None, when: str) -> EventTable:
    """:func:`window_events` without history, kept per shape: these tables do not depend on
    the patient (nor do their pair plans, solver arrays and tiled copies, cached inside them).

    The key holds what the table is built from: the structure's compartment layout (an event
    table depends on nothing else of the model, so specs sharing a layout share the tables),
    the dose route and sizes, and the window."""
    s = spec.structure
    layout = (type(s).__name__, s.name, tuple(s.compartments), s.dose_compartment,
              tuple(s.dosable), tuple(s.observed), tuple(s.outputs))
    key = (layout, central_compartment(spec), route, duration, interval, when, win.day,
           win.loading, maintenance, loading)
    if key not in _UNIT_TABLES:
        if len(_UNIT_TABLES) > 512:
            _UNIT_TABLES.clear()
        _UNIT_TABLES[key] = window_events(spec, win, route, duration, interval,
                                          maintenance=maintenance, loading=loading)
    return _UNIT_TABLES[key]


def predict_draws(spec: ModelSpec, events: EventTable, parameters: Mapping[str, np.ndarray]):
    """Concentrations (draws, points) of a one-subject event table for every draw.

    The draws are predicted in chunks: a closed form superposes every (dose, point) pair of
    every draw at once, so a long dose history would otherwise need gigabytes.
    """
    n = len(next(iter(parameters.values())))
    pairs = max(len(events.dose_point_pairs()[0]), events.n_points, 1)
    size = max(1, min(n, _CHUNK_PAIRS // pairs))
    tiles = events.derived.setdefault("popkin.dosing.tiles", {})
    out = np.empty((n, events.n_points))
    for begin in range(0, n, size):
        end = min(n, begin + size)
        k = end - begin
        if k not in tiles:
            if len(tiles) >= 2:
                tiles.clear()   # tiled copies of the last chunk sizes (a full and a last chunk)
            tiles[k] = tile_events(events, k)
        chunk = {name: np.asarray(v)[begin:end] for name, v in parameters.items()}
        flat = np.asarray(spec.structure.predict(tiles[k], chunk), dtype=float)
        out[begin:end] = flat.reshape(k, events.n_points)
    return out * spec.output_scale[0]


def check_evaluation_size(candidates: Sequence[Candidate], whens: Sequence[str], hours: float,
                          draws: int, history_doses: int = 0) -> None:
    """Refuse, before any sampling, an evaluation whose work or memory has no reasonable bound.

    ``whens`` are the criteria's ``"ss"`` / ``"dayN"``, ``hours`` the model time units in 24 h,
    ``history_doses`` the patient's past doses (each superposed at every grid point).
    """
    shapes: dict[tuple, int] = {}
    for c in candidates:
        key = (c.interval, c.duration, bool(c.loading_dose))
        shapes[key] = shapes.get(key, 0) + 1
    total = 0
    for (interval, duration, loading), members in shapes.items():
        for when in whens:
            win = window(interval, duration, when, hours, loading)
            doses = len(win.maintenance) + (1 if loading else 0)
            if not win.steady_state:
                doses += history_doses
                values = members * draws * len(win.times)
                if values > MAX_PROFILE_VALUES:
                    raise SpecError(
                        f"{members} candidate regimens x {draws} draws x {len(win.times)} time "
                        f"points on day {when[3:]} is {values:.3g} concentrations, more than the "
                        f"limit of {MAX_PROFILE_VALUES:.3g} held in memory at once; use fewer "
                        "draws, a larger amount step or a narrower amount range")
            total += doses * len(win.times) * draws
    if total > MAX_PAIR_DRAWS:
        raise SpecError(
            f"evaluating the candidates needs about {total:.3g} dose-time evaluations ({draws} "
            f"draws, doses up to the target's day and the patient's {history_doses} past "
            f"doses), more than the limit of {MAX_PAIR_DRAWS:.3g} (about ten minutes of work); "
            "use fewer draws, an earlier target day or steady state (@ss)")


def profile(win: Window, conc: np.ndarray, hours: float) -> Profile:
    return Profile(win.times, conc, win.interval, win.day, win.segments, hours, win.steady_state)


def replace_amount(candidate: Candidate, amount: float) -> Candidate:
    return replace(candidate, amount=amount)
