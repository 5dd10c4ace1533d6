r"""Therapeutic targets and toxicity limits: exposure metrics registered by name.

A target or a limit is written ``metric[(argument)][@when]:window``:

=========================== ===============================================================
``auc24:400-600``           AUC over 24 h at steady state between 400 and 600
``auc:200-300``             AUC over one dosing interval at steady state
``trough:10-20``            concentration just before the next dose (end of the interval)
``peak:<40``                highest concentration of the interval (a limit: keep below 40)
``cavg:5-10``               average concentration over the interval (AUC / interval)
``ftmic(2):>=40``           percentage of the interval with concentration above 2 (the MIC)
``trough@day2:10-20``       the same metric on day 2 of the new regimen instead of steady state
=========================== ===============================================================

Windows are ``low-high``, ``<x`` / ``<=x`` (at most) or ``>x`` / ``>=x`` (at least); a
continuous metric makes ``<`` and ``<=`` the same. A *target* is attained when the metric is
inside its window; a *limit* is exceeded when the metric is outside its window, so
``--limit trough:<20`` reads "the trough must stay below 20".

When the metric is read (``@when``)
-----------------------------------
``@ss`` (the default): at steady state of the new regimen; the dosing interval is
:math:`[0, \tau]` after a dose of the steady-state train, the patient's history is
irrelevant. ``@dayN``: on day ``N`` (1 = the first 24 h, at most :data:`MAX_TARGET_DAY`) after the start of
the new regimen,
with the patient's own history and the optional loading dose; the dosing interval is the last
interval of the new regimen that begins in that day, ``auc24`` integrates the whole day.

Numerics
--------
Concentrations are evaluated on a grid whose segments end at every dose, at the end of every
infusion and one eighth of an interval after each dose (where absorption bends the curve most;
a bolus jump is two points, before and after); AUCs are Simpson's rule per segment
(64 sub-intervals), so kinks and jumps never fall inside a segment. ``trough`` is the
left limit at the end of the interval, ``peak`` the largest grid value (exact at the end of an
infusion or at a bolus, within the grid spacing for oral absorption), ``ftmic`` interpolates
log-linearly between grid points, exact for mono-exponential decline.

Examples
--------
>>> t = parse_target("auc24:400-600")
>>> t.metric.name, t.low, t.high, t.when
('auc24', 400.0, 600.0, 'ss')
>>> parse_target("ftmic(2)@day3:>=40").describe()
'ftmic(2) on day 3 >= 40'
>>> metric_names()
['auc', 'auc24', 'cavg', 'ftmic', 'peak', 'trough']
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..population.covariates import SpecError

__all__ = ["Metric", "Target", "Profile", "parse_target", "register_metric", "metric_names",
           "MAX_TARGET_DAY"]

#: Latest day a target may be read on (``@dayN``): one year of the new regimen.
MAX_TARGET_DAY = 366


@dataclass(frozen=True)
class Profile:
    """Concentrations ``conc`` (..., T) at ``times`` (T,) over one evaluation window.

    ``interval`` is ``(start, end)`` of the dosing interval the interval metrics read,
    ``day`` ``(start, end)`` of the 24-h window of ``auc24``, ``segments`` the index ranges
    ``(i, j)`` of grid points between breakpoints (no jump or kink inside), ``hours`` the
    length of 24 h in the model's time unit.
    """

    times: np.ndarray
    conc: np.ndarray
    interval: tuple[float, float]
    day: tuple[float, float]
    segments: tuple[tuple[int, int], ...]
    hours: float = 24.0
    steady_state: bool = True

    def integral(self, low: float, high: float) -> np.ndarray:
        """AUC over ``[low, high]`` (both breakpoints of the grid), Simpson per segment."""
        from scipy.integrate import simpson

        total = np.zeros(self.conc.shape[:-1])
        eps = 1e-9 * max(1.0, abs(high))
        for i, j in self.segments:
            a, b = self.times[i], self.times[j - 1]
            if a >= low - eps and b <= high + eps and b > a:
                total = total + simpson(self.conc[..., i:j], x=self.times[i:j], axis=-1)
        return total

    def interval_points(self) -> tuple[int, int]:
        """Grid index range ``[i, j)`` of the dosing interval (both limits included)."""
        low, high = self.interval
        eps = 1e-9 * max(1.0, abs(high))
        inside = np.flatnonzero((self.times >= low - eps) & (self.times <= high + eps))
        return int(inside[0]), int(inside[-1]) + 1


@dataclass(frozen=True)
class Metric:
    """An exposure metric: ``compute(profile, argument) -> values`` over the leading axes."""

    name: str
    unit: str                         # "auc", "concentration" or "percent"
    compute: Callable
    needs_argument: bool = False
    description: str = ""
    homogeneous: bool = True          # metric(a * profile) = a * metric(profile) for a > 0

    def unit_label(self, units) -> str:
        conc = units.get("concentration", "concentration")
        time = units.get("time", "time")
        return {"auc": f"{conc}·{time}", "concentration": conc, "percent": "%"}[self.unit]


_METRICS: dict[str, Metric] = {}


def register_metric(name: str, unit: str, *, needs_argument: bool = False, description: str = "",
                    homogeneous: bool = False):
    """Register ``compute(profile, argument)`` as the metric ``name``.

    ``homogeneous=True`` declares that scaling the profile scales the metric (AUC, trough);
    steady-state candidates that differ only in amount then share one computation.
    """

    def decorator(func):
        if name in _METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        _METRICS[name] = Metric(name, unit, func, needs_argument, description, homogeneous)
        return func

    return decorator


def metric_names() -> list[str]:
    return sorted(_METRICS)


@register_metric("auc24", "auc", homogeneous=True, description="AUC over 24 h")
def _auc24(profile: Profile, argument):
    if profile.steady_state:
        low, high = profile.interval
        return profile.integral(low, high) * profile.hours / (high - low)
    return profile.integral(*profile.day)


@register_metric("auc", "auc", homogeneous=True, description="AUC over the dosing interval")
def _auc(profile: Profile, argument):
    return profile.integral(*profile.interval)


@register_metric("cavg", "concentration", homogeneous=True,
                 description="average concentration over the interval")
def _cavg(profile: Profile, argument):
    low, high = profile.interval
    return profile.integral(low, high) / (high - low)


@register_metric("trough", "concentration", homogeneous=True,
                 description="concentration just before the next dose")
def _trough(profile: Profile, argument):
    _, j = profile.interval_points()
    return profile.conc[..., j - 1]


@register_metric("peak", "concentration", homogeneous=True,
                 description="highest concentration of the interval")
def _peak(profile: Profile, argument):
    i, j = profile.interval_points()
    return profile.conc[..., i:j].max(axis=-1)


@register_metric("ftmic", "percent", needs_argument=True,
                 description="percentage of the interval above the MIC")
def _ftmic(profile: Profile, mic):
    i, j = profile.interval_points()
    t = profile.times[i:j]
    c = np.maximum(profile.conc[..., i:j], 1e-300)
    c0, c1 = c[..., :-1], c[..., 1:]
    dt = np.diff(t)
    above0, above1 = c0 > mic, c1 > mic
    with np.errstate(divide="ignore", invalid="ignore"):
        # where the log concentration crosses log(MIC), as a fraction of the step
        cross = np.log(mic / c0) / np.log(c1 / c0)
    cross = np.clip(np.nan_to_num(cross, nan=0.5), 0.0, 1.0)
    time_above = np.where(above0 & above1, dt,
                          np.where(above0, cross * dt, np.where(above1, (1 - cross) * dt, 0.0)))
    low, high = profile.interval
    return 100.0 * time_above.sum(axis=-1) / (high - low)


# -- parsing --------------------------------------------------------------------------------

_NUMBER = r"[+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_SYNTAX = re.compile(r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?:\((?P<arg>[^)]*)\))?\s*"
                     r"(?:@\s*(?P<when>[A-Za-z0-9]+))?\s*:\s*(?P<window>.+?)\s*$")


@dataclass(frozen=True)
class Target:
    """A metric, when it is read (``"ss"`` or ``"dayN"``) and its window ``[low, high]``."""

    metric: Metric
    low: float
    high: float
    when: str = "ss"
    argument: float | None = None
    text: str = ""

    @property
    def day(self) -> int | None:
        return None if self.when == "ss" else int(self.when[3:])

    @property
    def label(self) -> str:
        arg = "" if self.argument is None else f"({self.argument:g})"
        return f"{self.metric.name}{arg}" + ("" if self.when == "ss" else f"@{self.when}")

    def window_text(self) -> str:
        if math.isinf(self.low):
            return f"<= {self.high:g}"
        if math.isinf(self.high):
            return f">= {self.low:g}"
        return f"{self.low:g}-{self.high:g}"

    def describe(self) -> str:
        arg = "" if self.argument is None else f"({self.argument:g})"
        when = "" if self.when == "ss" else f" on day {self.day}"
        return f"{self.metric.name}{arg}{when} {self.window_text()}"

    def inside(self, values: np.ndarray) -> np.ndarray:
        return (values >= self.low) & (values <= self.high)

    def compute(self, profile: Profile) -> np.ndarray:
        return self.metric.compute(profile, self.argument)


def parse_target(text: str, *, where: str = "target") -> Target:
    """Parse ``metric[(argument)][@when]:window`` (see the module docstring)."""
    if isinstance(text, Target):
        return text
    m = _SYNTAX.match(str(text))
    if not m:
        raise SpecError(f"{where} {text!r}: write metric:window, e.g. auc24:400-600, trough:10-20 "
                        f"or peak:<40 (metrics: {', '.join(metric_names())})")
    name = m.group("name").lower()
    if name not in _METRICS:
        raise SpecError(f"{where} {text!r}: unknown metric {name!r}; known metrics: "
                        f"{', '.join(metric_names())}")
    metric = _METRICS[name]
    argument = None
    if metric.needs_argument:
        arg = (m.group("arg") or "").strip()
        if not re.fullmatch(_NUMBER, arg) or float(arg) <= 0:
            raise SpecError(f"{where} {text!r}: {name} needs a positive number in brackets, "
                            f"e.g. {name}(2):>=40")
        argument = float(arg)
    elif m.group("arg") is not None:
        raise SpecError(f"{where} {text!r}: {name} takes no argument in brackets")
    when = (m.group("when") or "ss").lower()
    if not (when == "ss" or re.fullmatch(r"day[1-9]\d*", when)):
        raise SpecError(f"{where} {text!r}: '@{m.group('when')}' must be @ss (steady state) or "
                        "@dayN (day N of the new regimen, e.g. @day2)")
    if when != "ss" and (len(when) > 3 + len(str(MAX_TARGET_DAY))
                         or int(when[3:]) > MAX_TARGET_DAY):
        # the whole course up to the day is simulated for every draw and candidate
        raise SpecError(f"{where} {text!r}: day {when[3:]} is beyond the limit, day "
                        f"{MAX_TARGET_DAY} (one year after the start of the new regimen); a "
                        "regimen is read within its first year, or at steady state (@ss)")
    low, high = _window(m.group("window"), text, where)
    return Target(metric, low, high, when, argument, str(text).strip())


def _window(window: str, text: str, where: str) -> tuple[float, float]:
    w = window.replace(" ", "")
    m = re.fullmatch(rf"({_NUMBER})-({_NUMBER})", w)
    if m:
        low, high = float(m.group(1)), float(m.group(2))
        if low > high:
            raise SpecError(f"{where} {text!r}: the window {window!r} has low > high")
        return low, high
    m = re.fullmatch(rf"(<=?|>=?)({_NUMBER})", w)
    if m:
        value = float(m.group(2))
        return (-math.inf, value) if m.group(1).startswith("<") else (value, math.inf)
    raise SpecError(f"{where} {text!r}: the window {window!r} must be low-high, <x or >x "
                    "(e.g. 400-600, <40, >=10)")
