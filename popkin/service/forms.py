"""A recommendation request, from the web form or the JSON API, checked before it is queued.

Everything is validated here, in the web server, so that a mistake is shown on the form at
once instead of after a wait in the queue: the models (library models or a drug's models; user
text never becomes a path), the targets and limits (popkin's own parser), and every number
with its bounds. What comes out is the keyword arguments of
:func:`popkin.dosing.recommend`.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

from ..dosing.averaging import MAX_MODELS, drug_models
from ..dosing.targets import parse_target
from ..population.spec import SpecError, library_models, load_model
from . import ServiceError

MAX_DRAWS = 20_000
MAX_LIST = 20
METHODS = ("nuts", "map")
ROUTES = ("oral", "iv_bolus", "infusion")


class RequestError(ServiceError):
    """A field of a recommendation request that cannot be used, named."""


FIT_PREFIX = "fit:"
_FIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def fit_folders(fits: Path | None) -> list[str]:
    """The fit folders the service offers: the folders directly inside ``fits`` (the
    ``--fits`` folder) that hold a complete fit (:data:`popkin.inference.result.FIT_FILES`)."""
    from ..inference.result import FIT_FILES

    if fits is None:
        return []
    return sorted(p.name for p in fits.iterdir()
                  if _FIT_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
                  and all((p / f).is_file() for f in FIT_FILES))


def fit_hash(folder: Path) -> str:
    """SHA-256 over a fit folder's files: a re-run refuses a fit that changed since."""
    from ..inference.result import FIT_FILES

    digest = hashlib.sha256()
    for name in FIT_FILES:
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_choices(fits: Path | None = None) -> dict[str, list[str]]:
    """``{"drugs": [...], "models": [...], "fits": [...]}``: what the form offers."""
    models = library_models()
    drugs = sorted({load_model(m).drug for m in models} - {""})
    return {"drugs": [d for d in drugs if len(drug_models(d)) > 1], "models": models,
            "fits": [FIT_PREFIX + name for name in fit_folders(fits)]}


def _fit_model(name: str, fits: Path | None) -> dict:
    """A fit folder of the ``--fits`` folder as a model: only a name the service lists, never
    a path the user wrote."""
    if name not in fit_folders(fits):
        raise RequestError(f"model: {FIT_PREFIX}{name[:60]!r} is not one of the service's fit "
                           "folders")
    folder = fits / name
    return {"name": FIT_PREFIX + name, "source": f"fit folder {name}",
            "spec_text": (folder / "model.toml").read_text(encoding="utf-8"),
            "fit_path": str(folder.resolve()), "fit_hash": fit_hash(folder)}


def resolve_models(choice: str, fits: Path | None = None) -> list[dict]:
    """The models a choice names: a library model, a drug (its library models), a fit folder
    of the service (``fit:NAME``), or several of these separated by commas; each as
    ``{"name", "source", "spec_text"}`` (and ``fit_path``, ``fit_hash`` for a fit)."""
    from ..population.spec import _library_specs, _read_text

    text = str(choice or "").strip()
    if not text or len(text) > 1000:
        raise RequestError("model: choose a library model, a drug or a fit")
    shipped = _library_specs()
    if text.startswith(FIT_PREFIX) and "," not in text:
        return [_fit_model(text[len(FIT_PREFIX):], fits)]
    if text in shipped:
        names = [text]
    elif "," in text:
        names = [part.strip() for part in text.split(",")]
    else:
        names = drug_models(text) if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text) else []
        if not names:
            raise RequestError(f"model: {text[:60]!r} is neither a library model nor a drug "
                               f"with library models (models: {', '.join(sorted(shipped))})")
    unknown = [n for n in names if n not in shipped and not n.startswith(FIT_PREFIX)]
    if unknown:
        raise RequestError(f"model: {unknown[0][:60]!r} is not a library model")
    if len(set(names)) != len(names):
        raise RequestError("model: a model is named twice")
    if len(names) > MAX_MODELS:
        raise RequestError(f"model: at most {MAX_MODELS} models can be averaged")
    return [_fit_model(n[len(FIT_PREFIX):], fits) if n.startswith(FIT_PREFIX) else
            {"name": n, "source": f"models/{shipped[n].name}",
             "spec_text": _read_text(shipped[n])} for n in names]


def _text(form: dict, key: str) -> str:
    value = form.get(key)
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    if not isinstance(value, str):
        raise RequestError(f"{key}: expected text")
    if len(value) > 500:
        raise RequestError(f"{key}: at most 500 characters")
    return value.strip()


def _numbers(form: dict, key: str, *, count: int | None = None) -> list[float] | None:
    raw = form.get(key)
    if isinstance(raw, list):
        values = raw
    else:
        text = _text(form, key)
        if not text:
            return None
        values = [v for v in re.split(r"[,\s]+", text) if v]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise RequestError(f"{key}: a comma-separated list of numbers") from None
    if not numbers or len(numbers) > MAX_LIST:
        raise RequestError(f"{key}: between 1 and {MAX_LIST} numbers")
    if not all(math.isfinite(v) and v > 0 for v in numbers):
        raise RequestError(f"{key}: every value must be a positive finite number")
    if count is not None and len(numbers) != count:
        raise RequestError(f"{key}: {count} numbers")
    return numbers


def _number(form: dict, key: str, default, *, low: float, high: float, whole: bool = False):
    text = _text(form, key)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise RequestError(f"{key}: {text[:40]!r} is not a number") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise RequestError(f"{key}: between {low:g} and {high:g}")
    if whole:
        if not value.is_integer():
            raise RequestError(f"{key}: a whole number")
        return int(value)
    return value


def _criteria(form: dict, key: str, required: bool) -> list[str]:
    raw = form.get(key)
    items = raw if isinstance(raw, list) else [v for v in re.split(r"[;\n]", _text(form, key))]
    items = [str(v).strip() for v in items if str(v).strip()]
    if required and not items:
        raise RequestError(f"{key}: give at least one, e.g. auc24:400-600")
    if len(items) > 5:
        raise RequestError(f"{key}: at most 5")
    for item in items:
        try:
            parse_target(item, where=key)
        except SpecError as error:
            raise RequestError(str(error)) from None
    return items


def recommendation_request(form: dict, fits: Path | None = None
                           ) -> tuple[list[dict], dict, int, str]:
    """``(models, options, seed, method)`` from a form or a JSON body."""
    models = resolve_models(_text(form, "model"), fits)
    method = _text(form, "method") or "nuts"
    if method not in METHODS:
        raise RequestError(f"method: {method[:20]!r} is not one of {', '.join(METHODS)}")
    route = _text(form, "route") or None
    if route is not None and route not in ROUTES:
        raise RequestError(f"route: {route[:20]!r} is not one of {', '.join(ROUTES)}")
    choice = _text(form, "models") or "average"
    if choice not in ("average", "select"):
        raise RequestError("models: 'average' or 'select'")
    amount_range = _numbers(form, "amount_range", count=2)
    if amount_range is not None and amount_range[0] > amount_range[1]:
        raise RequestError("amount_range: LOW,HIGH with LOW <= HIGH")
    sample = form.get("suggest_sample")
    suggest = (_numbers(form, "sample_times") or True) if str(sample).lower() in (
        "1", "true", "on", "yes") else False
    options = {
        "target": _criteria(form, "target", required=True),
        "limit": _criteria(form, "limit", required=False) or None,
        "route": route,
        "amount_step": _number(form, "amount_step", None, low=1e-9, high=1e7),
        "amount_range": amount_range,
        "intervals": _numbers(form, "intervals"),
        "durations": _numbers(form, "durations"),
        "loading_dose": _numbers(form, "loading_dose"),
        "start": _number(form, "start", None, low=0, high=24 * 366 * 20),
        "max_limit_probability": _number(form, "max_limit_probability", 0.1, low=0, high=1),
        "draws": _number(form, "draws", 1000, low=100, high=MAX_DRAWS, whole=True),
        "models": choice,
        "suggest_sample": suggest,
    }
    seed = _number(form, "seed", 0, low=0, high=2**31 - 1, whole=True)
    return models, options, seed, method
