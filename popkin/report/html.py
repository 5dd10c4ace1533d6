"""Self-contained HTML documents: figures embedded as PNG data, no remote resources.

>>> doc = HtmlDocument("Example")
>>> doc.paragraph("A <b> is escaped.")
>>> doc.table(pd.DataFrame({"a": [1.23456]}))
>>> html = doc.render()
>>> "&lt;b&gt;" in html and "1.235" in html and "http" not in html
True
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .._output import write_file

__all__ = ["HtmlDocument", "figure_png"]

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  margin:2em auto;max-width:1000px;color:#1a1a1a;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;border-bottom:2px solid #2c5d8a;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:1.6em;color:#2c5d8a}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #c8d0d8;padding:.25em .6em;text-align:right}
th{background:#eef2f6} td:first-child,th:first-child,td.text{text-align:left}
.warn{background:#fff4e0;border-left:4px solid #e69500;padding:.5em 1em;margin:.5em 0}
.ok{background:#eaf6ea;border-left:4px solid #3a9a3a;padding:.5em 1em;margin:.5em 0}
.meta{color:#555;font-size:.9em} figure{margin:1em 0} figcaption{font-size:.9em;color:#444}
img{max-width:100%}
"""


def figure_png(fig, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib figure (closed afterwards)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _format(value):
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "–"
        return f"{value:.4g}"
    return str(value)


def _cell(value) -> str:
    """A table cell: numbers right-aligned (the table's default), words left-aligned."""
    css = ' class="text"' if isinstance(value, str) else ""
    return f"<td{css}>{html.escape(_format(value))}</td>"


class HtmlDocument:
    """A report built section by section."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, css: str | None = None) -> None:
        cls = f' class="{css}"' if css else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def notes(self, items, css: str = "warn") -> None:
        for item in items:
            self.parts.append(f'<div class="{css}">{html.escape(str(item))}</div>')

    def table(self, frame: pd.DataFrame, caption: str | None = None) -> None:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
        rows = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>"
                       for row in frame.itertuples(index=False))
        if caption:
            self.parts.append(f'<p class="meta">{html.escape(caption)}</p>')
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")

    def figure(self, fig_or_png, caption: str = "", alt: str = "") -> None:
        png = fig_or_png if isinstance(fig_or_png, bytes) else figure_png(fig_or_png)
        data = base64.b64encode(png).decode("ascii")
        self.parts.append(f'<figure><img alt="{html.escape(alt or caption)}" '
                          f'src="data:image/png;base64,{data}"/>'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
                f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
                f"<body>\n{body}\n</body></html>\n")

    def write(self, path: str | os.PathLike) -> Path:
        return write_file(path, self.render())
