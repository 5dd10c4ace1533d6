"""User text, checked once where it is read and made safe once where it is written.

A spec or a dataset names things: parameters, ODE states, covariates, outputs, genotype or
category levels, the model itself, and patients. That text later reaches places where a
character can mean more than it says: generated source code, file names, spreadsheet cells and
matplotlib labels. This module holds the one rule for each:

- :func:`identifier_problem`: parameters, states, covariates and outputs are plain ASCII
  identifiers (``[A-Za-z_][A-Za-z0-9_]*``) of at most :data:`MAX_IDENTIFIER_LENGTH` characters,
  not a Python keyword.
- :func:`label_problem`: level names, model names and units are printable text of bounded length
  (no control characters, no line breaks).
- :func:`folder_names`: a patient ID as a folder name (plain IDs stay readable; anything else
  is reduced to safe characters and tagged with a hash; names stay unique).
- :func:`spreadsheet_safe`: a text cell that a spreadsheet would run as a formula gets a leading
  single quote.
- :func:`figure_text`: text for a matplotlib label, title, legend entry or tick label, with
  ``$`` escaped so that it is never read as mathtext.

Examples
--------
>>> identifier_problem("CL"), identifier_problem("CL\\nimport os") is not None
(None, True)
>>> folder_names([42, "A-7", "../x"])
{42: 'ID_42', 'A-7': 'ID_A-7', '../x': 'ID_x-d6b96a97d1'}
>>> spreadsheet_safe("=1+1"), spreadsheet_safe("-5"), spreadsheet_safe(-5)
("'=1+1", '-5', -5)
>>> figure_text("ID $x$")
'ID \\\\$x\\\\$'
"""

from __future__ import annotations

import hashlib
import keyword
import re
import unicodedata
from collections import Counter

__all__ = ["MAX_IDENTIFIER_LENGTH", "MAX_LABEL_LENGTH", "identifier_problem", "label_problem",
           "folder_names", "spreadsheet_safe", "spreadsheet_safe_frame", "figure_text"]

MAX_IDENTIFIER_LENGTH = 64
MAX_LABEL_LENGTH = 120

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# readable as a folder name on every common file system: no separators, no leading dot, no
# trailing dot or space (Windows drops them), nothing a shell or a URL would need to quote
_PLAIN_FOLDER = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def identifier_problem(name, *, reserved=frozenset()) -> str | None:
    """What is wrong with ``name`` as a parameter, state, covariate or output name, or None.

    ``reserved`` adds names with a meaning of their own where the name is used (for ODE models:
    the functions of the equation language, time ``t``, ``F`` and ``ALAG``).
    """
    if not isinstance(name, str):
        return f"must be text, not {type(name).__name__}"
    if not name:
        return "is empty"
    if not _IDENTIFIER.fullmatch(name):
        return ("is not a plain name: use letters A-Z, a-z, digits and _, starting with a "
                "letter or _")
    if len(name) > MAX_IDENTIFIER_LENGTH:
        return f"is longer than {MAX_IDENTIFIER_LENGTH} characters"
    if keyword.iskeyword(name):
        return "is a Python keyword"
    if name in reserved:
        return "is reserved"
    return None


def label_problem(text, *, max_length: int = MAX_LABEL_LENGTH) -> str | None:
    """What is wrong with ``text`` as a level name, model name or unit, or None."""
    if not isinstance(text, str):
        return f"must be text, not {type(text).__name__}"
    if not text.strip():
        return "is empty"
    if len(text) > max_length:
        return f"is longer than {max_length} characters"
    bad = next((c for c in text if unicodedata.category(c)[0] in "CZ" and c != " "), None)
    if bad is not None:
        return (f"holds the character {bad!r} (U+{ord(bad):04X}); use printable text without "
                "control characters or line breaks")
    return None


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def folder_names(ids) -> dict:
    """A safe, unique folder name for each patient ID: ``{id: "ID_<name>"}``.

    A plain ID (letters, digits, ``_``, ``-`` and inner dots, at most 64 characters) is kept as
    it is: 42 -> ``ID_42``. Any other ID keeps its safe characters and gets a hash of its full
    text, so ``../x`` -> ``ID_x-<hash>``. IDs whose names would differ only in case (the same
    folder on macOS and Windows) get the hash too. The result never holds a path separator,
    ``..``, a leading dot or a control character, and the ``ID_`` prefix keeps it clear of
    names Windows reserves (``CON``, ``NUL``, ...).
    """
    ids = list(dict.fromkeys(ids))
    texts = {i: str(i) for i in ids}
    names = {i: t if len(t) <= MAX_IDENTIFIER_LENGTH and _PLAIN_FOLDER.fullmatch(t)
             else _hashed(t) for i, t in texts.items()}
    folded = Counter(n.casefold() for n in names.values())
    for i, text in texts.items():
        if names[i] == text and folded[text.casefold()] > 1:
            names[i] = _hashed(text)
    out, taken = {}, Counter()
    for i in ids:
        # the same text for two IDs (1 and "1") gives the same hash: number the later ones
        name = f"ID_{names[i]}"
        taken[name.casefold()] += 1
        out[i] = name if taken[name.casefold()] == 1 else f"{name}-{taken[name.casefold()]}"
    return out


def _hashed(text: str) -> str:
    readable = _UNSAFE_RUN.sub("_", text).strip("_")[:32].strip("_")
    return f"{readable}-{_tag(text)}" if readable else _tag(text)


def spreadsheet_safe(value):
    """``value`` for a CSV cell that a spreadsheet opens: text that would start a formula
    (``= + - @``, tab, CR, LF) gets a leading single quote; numbers, and text that reads as a
    number (``-5``), stay as they are."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START) \
            or _NUMBER.fullmatch(value):
        return value
    return "'" + value


def spreadsheet_safe_frame(frame):
    """A copy of a DataFrame with :func:`spreadsheet_safe` applied to every text cell and
    column name."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    out = frame.copy()
    for column in out.columns:
        if is_object_dtype(out[column]) or is_string_dtype(out[column]):
            out[column] = out[column].map(spreadsheet_safe)
    out.columns = [spreadsheet_safe(c) for c in out.columns]
    return out


def figure_text(value) -> str:
    """``value`` as text for a matplotlib label: ``$`` escaped, so user text is never mathtext
    (an odd ``$`` pair in an ID would otherwise stop the figure with a parse error)."""
    return str(value).replace("$", r"\$")
