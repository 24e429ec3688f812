"""Report stage: draw what `ablate.analysis` computed as plotly figures and write one
self-contained HTML file (plotly.js inline, images as data URIs) that opens from file:// or
an e-mail attachment with no network. Every user-provided string is HTML-escaped.

    build      the entry (`write_report`): read, compute, export, draw, write, dashboard notes
    html       page primitives and the document
    sections   overview, Findings, gallery, failures (grid and tune alike)
    grid_page  a grid study's sections
    tune_page  a tune study's sections
"""
from ablate.report.build import gallery_for, write_report

__all__ = ["gallery_for", "write_report"]
