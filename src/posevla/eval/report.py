"""Reports: a self-contained HTML page and markdown tables (loss curves: `posevla.training.curves`).

The HTML page has inline CSS, no JavaScript and no external assets; images are referenced by the relative
paths given (keep them next to the page). Numbers: floats with |x| >= 100 get 1 decimal, others 2;
NaN / None show as an em dash.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


__all__ = ["format_value", "markdown_table", "html_table", "write_html_report"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.3em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.cards{display:flex;flex-wrap:wrap;gap:.6em;margin:1em 0}
.card{border:1px solid #ccc;border-radius:6px;padding:.5em .9em;min-width:8em;background:#fafafa}
.card .k{font-size:.8em;color:#666}.card .v{font-size:1.35em;font-weight:600}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f0f0f0}td.s,th.s{text-align:left}
figure{display:inline-block;margin:.5em;vertical-align:top}
figure img{max-width:100%;border:1px solid #ccc}figcaption{font-size:.85em;color:#555}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}
"""


def format_value(v: Any) -> str:
    """Human formatting: floats to 1–2 decimals, NaN/None as '—', lists comma-joined."""
    if v is None:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        x = float(v)
        if math.isnan(x):
            return "—"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.1f}" if abs(x) >= 100 else f"{x:.2f}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ", ".join(format_value(x) for x in list(v)) + "]"
    if isinstance(v, Mapping):
        return json.dumps({str(k): format_value(x) for k, x in v.items()})
    return str(v)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-markdown table of ``rows`` (columns = union of the keys in first-seen order)."""
    if not rows:
        return ""
    cols = _columns(rows)

    def cell(x: Any) -> str:
        return format_value(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(c, "")) if c in r else "" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def html_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """An HTML ``<table>`` of ``rows``; numbers right-aligned, text left-aligned."""
    if not rows:
        return "<p><em>(empty)</em></p>"
    cols = _columns(rows)
    out = ["<table>", "<tr>" + "".join(f'<th class="s">{html.escape(str(c))}</th>' for c in cols) + "</tr>"]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cls = "" if _is_number(v) else ' class="s"'
            cells.append(f"<td{cls}>{html.escape(format_value(v) if c in r else '')}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            items.extend(_flatten(v, name + "."))
        else:
            items.append((name, v))
    return items


def write_html_report(
    path: str | Path,
    *,
    title: str,
    summary: Mapping[str, Any],
    sections: Sequence[tuple[str, str]] | None = None,
    images: Sequence[tuple[str, str]] | None = None,
    tables: Sequence[tuple[str, Sequence[Mapping[str, Any]]]] | None = None,
    videos: Sequence[tuple[str, str]] | None = None,
) -> None:
    """Write one self-contained HTML page.

    Order: title, headline numbers (``summary``; nested dicts flattened to dotted names), then ``tables``
    (title, rows), ``sections`` (heading, plain text shown pre-formatted), ``images`` (caption, path
    relative to the page), ``videos`` (caption, path relative to the page: ``.mp4`` plays in a video
    element, anything else, e.g. an animated GIF, is shown as an image). All text is HTML-escaped.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    flat = _flatten(summary)
    if flat:
        parts.append('<div class="cards">')
        for k, v in flat:
            parts.append(
                f'<div class="card"><div class="k">{html.escape(k)}</div>'
                f'<div class="v">{html.escape(format_value(v))}</div></div>'
            )
        parts.append("</div>")
    for name, rows in tables or ():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(html_table(list(rows)))
    for heading, text in sections or ():
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(f"<pre>{html.escape(text)}</pre>")
    if images:
        parts.append("<h2>Figures</h2>")
        for caption, rel in images:
            src = html.escape(Path(rel).as_posix(), quote=True)
            parts.append(
                f'<figure><img src="{src}" alt="{html.escape(caption, quote=True)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    if videos:
        parts.append("<h2>Videos</h2>")
        for caption, rel in videos:
            src = html.escape(Path(rel).as_posix(), quote=True)
            media = (f'<video src="{src}" controls loop muted width="480"></video>' if src.endswith(".mp4")
                     else f'<img src="{src}" alt="{html.escape(caption, quote=True)}">')
            parts.append(f"<figure>{media}<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
