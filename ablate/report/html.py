"""Report stage, the page: HTML primitives every section uses (escaping, tables, notes,
numbered plotly figures, inline images) and the self-contained document around the studies
(plotly.js inline, styles, sortable tables). Every user-provided string is escaped here."""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math

import numpy as np
import plotly.graph_objects as go

from ablate import __version__
from ablate.results import Study


COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def esc(value) -> str:
    """`value` as HTML text: every user-provided string goes through here."""
    return html.escape(str(value), quote=True)


class Page:
    """Numbers figures and sections so div ids are stable from one report to the next."""

    def __init__(self):
        self.figures = 0

    def figure(self, fig: go.Figure, *, height: int = 420) -> str:
        """The figure as a div of the page (plotly.js is inlined once, by `document`)."""
        self.figures += 1
        fig.update_layout(height=height, margin=dict(l=60, r=30, t=50, b=50), template="plotly_white")
        return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{self.figures}",
                           default_height=f"{height}px", default_width="100%",
                           config={"displaylogo": False, "responsive": True})


def section(anchor: str, title: str, explanation: str, body: str) -> str:
    """A numbered part of a study: title, what it shows (HTML), then its body."""
    return (f'<section id="{esc(anchor)}"><h3>{esc(title)}</h3>'
            f'<p class="explain">{explanation}</p>{body}</section>')


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def num(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def with_ci(mean, lo, hi, n=None, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if isinstance(lo, float) and math.isnan(lo):
        return _sided(mean, digits)  # n = 1: the Findings banner says once that there are no intervals
    return f"{_sided(mean, digits)} <small>[{_sided(lo, digits)}, {_sided(hi, digits)}]</small>"


def _sided(x: float, digits: int) -> str:
    """x to `digits` decimals, with more where fewer would round a nonzero value to 0 (so a
    bound never reads as on the other side of 0: -0.000 or 0.000 for 0.0004)."""
    d = digits
    while x != 0 and round(abs(x), d) == 0 and d < 8:
        d += 1
    return f"{x:.{d}f}"


def table(headers: list[str], rows: list[list[tuple[str, object]]], *, sortable: bool = True) -> str:
    """rows of (cell html, sort value); the headers are plain text."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td data-v="{esc(v)}">{cell}</td>' for cell, v in row) + "</tr>" for row in rows)
    cls = ' class="sortable"' if sortable else ""
    hint = '<p class="hint">Click a column header to sort.</p>' if sortable else ""
    return f"{hint}<div class='scroll'><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def duration(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))


def png_uri(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def code_html(text: str) -> str:
    """Backticks in analysis text become <code>; everything else escaped."""
    parts = esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def anchor(name: str) -> str:
    return "s-" + "".join(c if c.isalnum() else "-" for c in name)


def study_block(study: Study, parts: list[str]) -> str:
    return (f'<article class="study" id="{anchor(study.name)}"><h2>{esc(study.kind)} study '
            f'<code>{esc(study.name)}</code></h2>{"".join(parts)}</article>')


def document(studies: list[Study], bodies: list[str], *, lead: str | None = None) -> str:
    """The whole self-contained HTML file: header, table of contents, the studies' bodies. `lead`
    (text) replaces the opening paragraph on verdicts, e.g. for a report of searches only."""
    from plotly.offline import get_plotlyjs

    names = ", ".join(s.name for s in studies)
    toc = "".join(f'<li><a href="#{anchor(s.name)}">{esc(s.kind)} study {esc(s.name)}</a></li>' for s in studies)
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ablate report: {esc(names)}</title>
<style>{CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<header><h1>ablate report: {esc(names)}</h1>
<p class="explain">{esc(lead) if lead else _GRID_LEAD} Written {esc(stamp)} by ablate {esc(__version__)}.</p>
<nav><ul>{toc}</ul></nav></header>
<main>{"".join(bodies)}</main>
<script>{SORT_JS}</script>
</body></html>
"""


_GRID_LEAD = ("Which training choices help, hurt or make no difference that matters, on which architecture, and by "
              "how much. Numbers are means over seeds with, from 2 seeds on, a 95% Student-t interval [low, high]; "
              "a verdict needs 3 or more paired seeds and keeps the chance of any false verdict per architecture at "
              "5% (each study's Findings panel states its rules and what its seeds allow).")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;padding:0 24px 48px;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-top:24px} h2{border-bottom:2px solid #444;padding-bottom:4px;margin-top:40px}
h3{margin-top:32px;margin-bottom:4px} h4{margin-bottom:4px}
.explain{color:#555;margin-top:2px} .note{background:#fff6d8;border-left:4px solid #e0b000;padding:6px 10px}
.hint{color:#888;font-size:.85em;margin:2px 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px} dt{font-weight:600} dd{margin:0} dd ul{margin:0;padding-left:18px}
.scroll{overflow-x:auto} table{border-collapse:collapse;font-size:.9em;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top} th{background:#f3f3f3}
table.sortable th{cursor:pointer} table.sortable th:hover{background:#e6e6e6}
td small{color:#666} pre{background:#f7f7f7;padding:6px;font-size:.8em;white-space:pre-wrap;max-width:720px}
li.verdict{font-weight:600} li.flag{color:#8a4b00}
.findings{background:#f5f9ff;border:1px solid #b8cde8;border-radius:6px;padding:8px 18px 12px}
.findings h4{margin:12px 0 2px} .findings ul{margin:2px 0}
.banner{background:#fff6d8;border-left:4px solid #e0b000;padding:6px 10px;font-weight:600}
.banner code,.findings code{background:#eee;padding:1px 4px;border-radius:3px}
.v-helps{color:#1a7f37;font-weight:600} .v-hurts{color:#c62828;font-weight:600}
.legend{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0} .swatch{display:inline-flex;align-items:center;gap:4px}
.swatch i{display:inline-block;width:14px;height:14px;border:1px solid #333}
table.gallery img{width:144px;height:auto;image-rendering:pixelated;display:block}
table.gallery td div{font-size:.8em;color:#444;max-width:144px}
"""


SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0], i = th.cellIndex, asc = th.dataset.asc !== '1';
    th.dataset.asc = asc ? '1' : '0';
    Array.from(body.rows).sort(function (a, b) {
      var x = a.cells[i].dataset.v, y = b.cells[i].dataset.v, nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? c : -c;
    }).forEach(function (r) { body.appendChild(r); });
  });
});
"""
