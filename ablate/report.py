"""Report stage: draw what `ablate.analysis` computed as plotly figures and write one
self-contained HTML file (plotly.js inline, images as data URIs) that opens from file:// or
an e-mail attachment with no network. Every user-provided string is HTML-escaped here."""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ablate import __version__, _io, analysis, dashboard, gallery
from ablate.analysis import METRIC_LABELS, Study
from ablate.errors import AblateError

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
GALLERY_IMAGES = gallery.GALLERY_IMAGES  # each grid trial stores its predictions of these


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def warm_up() -> None:
    """Load what plotly loads for a report's first figure (its template and validators: half a
    second of a core), e.g. while a grid's last cells run."""
    _Page(Path(".")).figure(go.Figure(go.Scatter(x=[0], y=[0])))


def write_report(*, results_dir: str | Path, study_names: list[str], out: str | Path | None = None,
                 storage: str | None = None, artifacts: str | None = None) -> Path:
    """Analyse each study, write effects.csv / comparisons.csv beside grid tables (and, for a
    grid read from its storage, runs.csv / summary.csv), and write the HTML report (default:
    <results_dir>/<first study>/report.html). `storage` is the Optuna storage to read grid
    studies from (needed on a machine that ran nothing) and overrides the URL recorded in a
    tune study's study.json (e.g. one with a password); `artifacts` overrides the artifact
    store the grid's trials recorded."""
    if not study_names:
        raise AblateError("no study given; pass --study-name NAME")
    studies = [analysis.load_study(results_dir, name, storage=storage, artifacts=artifacts) for name in study_names]
    page = _Page(Path(results_dir))
    bodies, notes = [], []
    for study in studies:
        runs = analysis.finished_runs(study)
        if runs.empty and not _has_pruned(study):
            what = "trials" if study.kind == "tune" else "cells"
            raise AblateError(f"study {study.name} has no finished {what} yet in {study.folder}; "
                              f"wait for `ablate {study.kind}` to finish one, then rerun `ablate report`")
        if study.kind == "tune":
            analysis.write_tables(study, runs)
            bodies.append(_tune_study(page, study, runs, storage))
        else:  # effects and comparisons once: the tables, the Findings panel and the figures share them
            effects, comps = analysis.factorial_effects(runs), analysis.paired_comparisons(runs)
            analysis.write_tables(study, runs, effects=effects, comparisons=comps)
            found = analysis.findings(study, runs, effects=effects, comparisons=comps)
            bodies.append(_grid_study(page, study, runs, found, effects, comps))
            notes.append((study, runs, found))
    out = Path(out) if out is not None else studies[0].folder / "report.html"
    path = _io.write_text(out, _document(studies, bodies))
    for study, runs, found in notes:  # the dashboard's study and trial notes point at this report
        why = dashboard.write_notes(study, runs, found, path, storage=storage or study.storage_url)
        if why:
            print(f"warning: no dashboard note for {study.name}: {why}", file=sys.stderr)
    return path


def _has_pruned(study: Study) -> bool:
    return study.kind == "tune" and not study.table.empty and (analysis.trial_states(study.table) == "PRUNED").any()


# --------------------------------------------------------------------------- page pieces
class _Page:
    """Numbers figures and sections so div ids are stable from one report to the next."""

    def __init__(self, results_dir: Path):
        self.results_dir = results_dir
        self.figures = 0

    def figure(self, fig: go.Figure, *, height: int = 420) -> str:
        self.figures += 1
        fig.update_layout(height=height, margin=dict(l=60, r=30, t=50, b=50), template="plotly_white")
        return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{self.figures}",
                           default_height=f"{height}px", default_width="100%",
                           config={"displaylogo": False, "responsive": True})


def _section(anchor: str, title: str, explanation: str, body: str) -> str:
    return (f'<section id="{esc(anchor)}"><h3>{esc(title)}</h3>'
            f'<p class="explain">{explanation}</p>{body}</section>')


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def _num(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _with_ci(mean, lo, hi, n=None, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if isinstance(lo, float) and math.isnan(lo):
        return f"{mean:.{digits}f}"  # n = 1: the Findings banner says once that there are no intervals
    return f"{mean:.{digits}f} <small>[{lo:.{digits}f}, {hi:.{digits}f}]</small>"


def _table(headers: list[str], rows: list[list[tuple[str, object]]], *, sortable: bool = True) -> str:
    """rows of (cell html, sort value); the headers are plain text."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td data-v="{esc(v)}">{cell}</td>' for cell, v in row) + "</tr>" for row in rows)
    cls = ' class="sortable"' if sortable else ""
    hint = '<p class="hint">Click a column header to sort.</p>' if sortable else ""
    return f"{hint}<div class='scroll'><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _duration(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))


def _png_uri(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# --------------------------------------------------------------------------- overview
def _overview(study: Study) -> str:
    ov = analysis.overview(study)
    ds = ov["dataset"]
    names = [str(n) for n in ds.get("class_names", [])]
    freq = ds.get("class_frequency") or []
    sizes = ", ".join(f"{esc(k)} {esc(v)}" for k, v in (ds.get("sizes") or {}).items())
    size = "×".join(map(str, ds.get("image_size", []))) or "?"
    classes = ", ".join(f"{esc(n)} ({freq[i]:.1%})" if i < len(freq) and freq[i] is not None else esc(n)
                        for i, n in enumerate(names))
    hardware = "".join(
        f"<li>{esc(h['device_name'])} ({esc(h['device'])}, {esc(h['threads'])} threads, {esc(h['precision'])}; "
        f"torch {esc(h['torch'])}, Python {esc(h['python'])}) — {h['runs']} run{'s' if h['runs'] != 1 else ''}</li>"
        for h in ov["hardware"]) or "<li>unknown (no run record yet)</li>"
    counts = ", ".join(f"{n} {esc(state)}" for state, n in sorted(ov["counts"].items())) or "none"
    unit = "trials" if study.kind == "tune" else "runs (cells × seeds)"
    items = [
        ("Dataset", f"{esc(ds.get('name', '?'))} [{esc(ds.get('layout', '?'))}], working size {esc(size)} px; "
                    f"images per split: {sizes or '?'}"),
        ("Classes", f"{len(names)} — {classes} <small>(share of non-void train pixels)</small>"),
        ("Hardware", f"<ul>{hardware}</ul>"),
        ("Seeds", _seeds_text(ov["seeds"])),
        ("Training", _training_setup(analysis.training_setup(study))),
        (unit.capitalize(), counts),
        ("Total compute", f"{_duration(ov['total_seconds'])} (sum of run wall times)"),
        ("Storage", f"<code>{esc(ov['storage'] or '–')}</code>"),
        ("Folder", f"<code>{esc(study.folder)}</code>"),
    ]
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _training_setup(setup: pd.DataFrame) -> str:
    """Per architecture: epoch budget, early-stopping rule, starting weights, metric resolution."""
    if setup.empty:
        return "–"
    items = "".join(f"<li><b>{esc(r.model)}</b>: {esc(r.epochs)} epochs; early stopping {esc(r.early_stopping)}; "
                    f"weights {esc(r.weights)}; val/test metrics at {esc(r.metrics)} resolution</li>"
                    for r in setup.itertuples())
    return f"<ul>{items}</ul>"


def _seeds_text(seeds: list[int]) -> str:
    """'1 seed (0)', '3 seeds (0, 1, 2)' — never a bare seed number that reads as a count."""
    if not seeds:
        return "–"
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"


# --------------------------------------------------------------------------- findings
def _findings(f: analysis.Findings) -> str:
    """The panel at the top: banners (seeds, bar), then per architecture its verdicts, every
    main effect in words, and its flagged cells."""
    label = METRIC_LABELS[f.metric]
    banners = []
    if f.n_max == 1:
        banners.append("One seed per cell: no intervals, no p-values and no verdicts anywhere in this report; "
                       "differences below are single runs and cannot be told from seed noise.")
    if f.seeds:
        banners.append(f"Not enough seeds for a verdict: the smallest cell has n={f.seeds['n_min']} "
                       f"({f.seeds['target']} paired seeds needed). {_code(f.seeds['text'])}.")
    bar = ("did-not-learn bar unknown (this study's dataset summary has no per-split class frequencies)"
           if f.bar is None else
           f"a cell did not learn when its mean val pixel accuracy is ≤ {f.bar['pixel_acc']:.1%} (the majority "
           f"class's share of non-void val pixels) or its val mIoU is ≤ {f.bar['miou']:.3f} (predicting the majority "
           f"class everywhere, {f.bar['classes_present']} classes present)")
    rules = (f"A verdict (helps / hurts) on {esc(label)} needs n ≥ 3 paired seeds, a 95% Student-t interval that "
             f"excludes 0 and a Holm-adjusted paired t-test p &lt; 0.05; Holm families: "
             + "; ".join(f"<i>{esc(k)}s</i>: {esc(v)}" for k, v in f.families.items())
             + f". Effects involving a cell that did not learn get no verdict; {esc(bar)}.")
    body = "".join(f'<p class="banner">{b}</p>' for b in banners) + f'<p class="explain">{rules}</p>'
    if f.design:
        body += f'<p class="explain"><b>Design.</b> {esc(f.design[0])}</p>'
        if len(f.design) > 1:
            body += f"<pre class='design'>{esc(chr(10).join(f.design[1:]))}</pre>"
    for a in f.archs:
        items = [f"<li class='verdict'>{esc(r['sentence'])}</li>" for r in a.verdicts]
        if not a.verdicts:
            items.append("<li>No verdict: no effect meets the rules above.</li>")
        mains = [f"{esc(_effect_name(r))}: {esc(analysis.VERDICT_SHORT.get(r['verdict'], r['verdict']))}, "
                 f"{esc(analysis.interval_text(r['estimate'], r['ci_low'], r['ci_high']))}" for r in a.main_effects
                 if r["kind"] == "main" and not pd.isna(r["estimate"])]
        if mains:
            items.append(f"<li>Main effects on {esc(label)} (n={a.n_min}): " + "; ".join(mains) + "</li>")
        for what, cells in _flag_groups(a.flagged).items():
            items.append(f"<li class='flag'>{esc(what)}: {esc(', '.join(cells))}</li>")
        body += f"<h4>{esc(a.arch)}</h4><ul>{''.join(items)}</ul>"
    return f'<div class="findings">{body}</div>'


def _effect_name(row: dict) -> str:
    """'augmentation', 'loss = dice vs ce' (effects tables written before factors: the toggle's name)."""
    label = row.get("label")
    if isinstance(label, str) and label:
        return label
    return analysis.TOGGLE_LABELS.get(row["factors"], row["factors"])


def _flag_groups(flagged: pd.DataFrame) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for r in flagged.to_dict("records"):
        cell = r["cell"].split(" · ", 1)[-1]
        if r["did_not_learn"]:
            groups.setdefault("Did not learn", []).append(cell)
        if r["n_best_is_last"]:
            groups.setdefault("Still improving at the last epoch (budget-limited)", []).append(
                f"{cell} ({r['n_best_is_last']}/{r['n']})")
        if r["n_early_stopped"]:
            groups.setdefault("Early-stopped", []).append(f"{cell} ({r['n_early_stopped']}/{r['n']})")
    return groups


def _code(text: str) -> str:
    """Backticks in analysis text become <code>; everything else escaped."""
    parts = esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


# --------------------------------------------------------------------------- grid
def _grid_study(page: _Page, study: Study, runs: pd.DataFrame, found: analysis.Findings, effects: pd.DataFrame,
                comps: pd.DataFrame) -> str:
    metric = analysis.primary_metric(runs)
    label = METRIC_LABELS[metric]
    stats = analysis.cell_stats(runs)
    ranking = analysis.compare_architectures(runs)
    cost = analysis.cost_table(runs)
    sid = _anchor(study.name)
    flags = analysis.cell_flags(runs)
    parts = [
        _section(f"{sid}-findings", "Findings", "What this study shows, per architecture, by the rules stated here; "
                 "the tables below hold every number.", _findings(found)),
        _section(f"{sid}-overview", "1. Overview", "What was trained, on what data and hardware, and how much of it finished.",
                 _overview(study)),
        _section(f"{sid}-table", "2. Grid table",
                 f"One row per cell (architecture × factor setting), over seeds: mean and 95% Student-t interval "
                 f"[low, high] over seeds, ordered by {esc(label)}. Δ is the paired difference to the same "
                 "architecture's reference cell (every toggle off, every other factor at its first level); p is the "
                 "paired t-test, Holm-adjusted over that architecture's comparisons.",
                 _grid_table(stats, comps, metric, flags) + _ranking(page, ranking)),
        _section(f"{sid}-effects", "3. Factor effects" if _has_factors(effects) else "3. Toggle effects",
                 f"What switching a toggle on, or a factor from its reference level to another, changes in {esc(label)}, "
                 "averaged over the other factors' settings (main effect), and how much one factor's effect depends on "
                 "another (interaction), with 95% Student-t intervals over seeds. Grey cells carry no verdict (see "
                 "Findings for the rules).",
                 _design_note(found) + _effects(page, effects, metric)),
        _section(f"{sid}-curves", "4. Learning curves",
                 "Per-epoch training and validation loss and validation mIoU of every run; pick an architecture with "
                 "the buttons. ★ marks the epoch whose checkpoint was kept (best val mIoU), ✕ where early stopping ended "
                 "the run.", _curves(page, analysis.learning_curves(study, runs))),
        _section(f"{sid}-classes", "5. Per-class IoU",
                 f"IoU of each class ({esc(metric.split('_')[0])} split) per cell, averaged over seeds: which classes each "
                 "setting actually segments. Blank: class absent from the split.",
                 _heatmap(page, analysis.class_iou_table(study, runs))),
        _section(f"{sid}-gallery", "6. Prediction gallery",
                 "A few fixed validation images, their ground truth, and the prediction of each architecture's best cell "
                 "(best cell by mean val mIoU; its best seed).", _gallery(page, study, runs)),
        _section(f"{sid}-cost", "7. Quality vs cost",
                 f"Mean wall time per run against {esc(label)}; the line joins the Pareto front — cells that no other cell "
                 "beats on both time and quality. Wall times include evaluation and vary with the machine's load.",
                 _pareto(page, cost)),
        _section(f"{sid}-failures", "8. Failures",
                 "Runs that crashed or diverged, with the reason and the end of the traceback.", _failures(study)),
    ]
    return _study_block(study, parts)


def _has_factors(effects: pd.DataFrame) -> bool:
    """Whether a factor other than the toggles varies (the section is then 'Factor effects')."""
    return not effects.empty and any(f not in analysis.TOGGLES for fs in effects["factors"].astype(str) for f in fs.split())


def _design_note(found: analysis.Findings) -> str:
    """The design, where it is not the full factorial: a fractional design's generators and
    aliases, one-at-a-time's blind spot."""
    if not found.design:
        return ""
    rest = f"<pre class='design'>{esc(chr(10).join(found.design[1:]))}</pre>" if len(found.design) > 1 else ""
    return _note(found.design[0]) + rest


def _anchor(name: str) -> str:
    return "s-" + "".join(c if c.isalnum() else "-" for c in name)


def _study_block(study: Study, parts: list[str]) -> str:
    return (f'<article class="study" id="{_anchor(study.name)}"><h2>{esc(study.kind)} study '
            f'<code>{esc(study.name)}</code></h2>{"".join(parts)}</article>')


def _grid_table(stats: pd.DataFrame, comps: pd.DataFrame, metric: str, flags: pd.DataFrame) -> str:
    wide = {(r["cell"], r["metric"]): r for r in stats.to_dict("records")}
    cells = list(dict.fromkeys(stats["cell"]))
    cells.sort(key=lambda c: -wide.get((c, metric), {}).get("mean", -np.inf))
    comp = {r["cell"]: r for r in comps[comps["metric"] == metric].to_dict("records")} if not comps.empty else {}
    flag = dict(zip(flags["cell"], flags["flags"]))
    references = set(comps["baseline"]) if not comps.empty else set()
    headers = ["cell", "seeds", "val mIoU", "test mIoU", "val pixel acc", "test pixel acc", "seconds / run", "images/s",
               f"Δ {METRIC_LABELS[metric]} vs reference", "Holm p", "P(improve)", "verdict", "flags"]
    rows = []
    for cell in cells:
        any_row = next(r for (c, _), r in wide.items() if c == cell)
        row = [(esc(cell), cell), (esc(any_row["seeds"]), any_row["n"])]
        for m in ("val_miou", "test_miou", "val_pixel_acc", "test_pixel_acc"):
            r = wide.get((cell, m))
            row.append((_with_ci(r["mean"], r["ci_low"], r["ci_high"], r["n"]), r["mean"]) if r else ("–", ""))
        for m, digits in (("seconds", 1), ("images_per_second", 1)):
            r = wide.get((cell, m))
            row.append((_num(r["mean"], digits), r["mean"]) if r else ("–", ""))
        c = comp.get(cell)
        if c:
            row += [(_with_ci(c["mean_diff"], c["ci_low"], c["ci_high"], c["n_pairs"]), c["mean_diff"]),
                    (esc(analysis.p_text(c["p_holm"]).lstrip("= ")), c["p_holm"]),
                    (_num(c["p_improve"], 2) if c["n_pairs"] > 1 else "–", c["p_improve"]),
                    (f"<span class='v-{esc(c['verdict'].split()[0])}'>{esc(c['verdict'])}</span>", c["verdict"])]
        else:
            row += [("reference" if cell in references or cell.endswith("no toggles") else "–", 0), ("–", ""), ("–", ""),
                    ("–", "")]
        row.append((esc(flag.get(cell, "")), flag.get(cell, "")))
        rows.append(row)
    return _table(headers, rows)


def _ranking(page: _Page, ranking: pd.DataFrame) -> str:
    if ranking.empty:
        return ""
    label = METRIC_LABELS[ranking["metric"].iloc[0]]
    rows = [[(str(r["rank"]), r["rank"]), (esc(r["arch"]), r["arch"]), (esc(r["best_cell"]), r["best_cell"]),
             (_with_ci(r["mean"], r["ci_low"], r["ci_high"], r["n"]), r["mean"]), (esc(r["tied_with"] or "–"), r["tied_with"])]
            for r in ranking.to_dict("records")]
    fig = go.Figure(go.Scatter(
        x=ranking["mean"], y=[esc(a) for a in ranking["arch"]], mode="markers", marker=dict(size=12),
        error_x=dict(type="data", symmetric=False, array=(ranking["ci_high"] - ranking["mean"]).fillna(0),
                     arrayminus=(ranking["mean"] - ranking["ci_low"]).fillna(0)),
        text=[esc(c) for c in ranking["best_cell"]], hovertemplate="%{y}: %{x:.3f}<br>%{text}<extra></extra>"))
    fig.update_layout(title=f"Architectures at their best cell: {label} with 95% CI", xaxis_title=label,
                      yaxis=dict(autorange="reversed"))
    return ("<h4>Architectures at their best cell</h4>"
            f"<p class='explain'>Each architecture's best cell is chosen by mean val mIoU and scored on {esc(label)}; "
            "architectures share a rank when their intervals overlap.</p>"
            + _table(["rank", "architecture", "best cell", label, "overlaps with"], rows, sortable=False)
            + (_note("With one seed there are no intervals: the ranking orders means only and cannot tell a real "
                     "difference from seed noise.") if (ranking["n"] < 2).any() else "")
            + page.figure(fig, height=120 + 50 * len(ranking)))


def _effects(page: _Page, effects: pd.DataFrame, metric: str) -> str:
    if effects.empty:
        return _note("No factor varies in this study, so there are no effects to estimate.")
    e = effects[effects["metric"] == metric]
    out = _effects_matrix(page, e[e["estimate"].notna()], metric)
    out += "<h4>Every effect</h4>"
    for arch, g in e.groupby("arch", sort=False):
        items = "".join(f"<li class='{'verdict' if r['verdict'] in analysis.VERDICT_WORDS else ''}'>{esc(r['sentence'])}</li>"
                        for r in g.to_dict("records"))
        out += f"<p><b>{esc(arch)}</b></p><ul>{items}</ul>"
    out += ("<p class='explain'>Main effect = mean(on) − mean(off) over the other factors' settings (for a factor "
            "with several levels: each level vs the first listed, the reference); interaction A × B = ½ × "
            "[(effect of A with B on) − (effect of A with B off)]. In a fractional design they come from the runs' "
            "±1 contrasts and each estimate also holds the effects it is aliased with (column aliases of "
            "effects.csv); one-at-a-time compares each varied cell with the reference cell. All are computed per seed "
            "(seeds present in every cell of the architecture); the interval is Student t over those per-seed "
            "effects, p the t-test, Holm-adjusted over the architecture's main effects and interactions. P(improve) "
            "is the share of seeds whose effect is positive (ties count half). All rows, val and test, are in "
            "effects.csv.</p>")
    return out


def _effects_matrix(page: _Page, shown: pd.DataFrame, metric: str) -> str:
    """Architecture × effect: colour = signed estimate where the effect has a verdict, grey
    where it has none; the text is the estimate, its interval and the verdict."""
    if shown.empty:
        return ""
    archs = list(dict.fromkeys(shown["arch"]))
    names = list(dict.fromkeys(shown["effect"]))
    cell = {(r["arch"], r["effect"]): r for r in shown.to_dict("records")}
    judged, unjudged, text = [], [], []
    for arch in archs:
        jr, ur, tr = [], [], []
        for name in names:
            r = cell.get((arch, name))
            has = r is not None and r["verdict"] in analysis.VERDICT_WORDS
            jr.append(r["estimate"] if has else None)
            ur.append(0.0 if r is not None and not has else None)
            tr.append("" if r is None else esc(f"{analysis.interval_text(r['estimate'], r['ci_low'], r['ci_high'])}")
                      .replace(" [", "<br>[") + f"<br><i>{esc(r['verdict'])}</i>")
        judged.append(jr), unjudged.append(ur), text.append(tr)
    limit = max(float(np.nanmax(np.abs(shown["estimate"]))), 1e-6)
    x = [esc(n.replace("_", " ")) for n in names]
    y = [esc(a) for a in archs]
    fig = go.Figure()
    fig.add_trace(go.Heatmap(z=unjudged, x=x, y=y, colorscale=[[0, "#e4e4e4"], [1, "#e4e4e4"]], showscale=False,
                             text=text, texttemplate="%{text}", hovertemplate="%{y} · %{x}<br>%{text}<extra>no verdict</extra>",
                             xgap=3, ygap=3))
    fig.add_trace(go.Heatmap(z=judged, x=x, y=y, colorscale="RdBu", zmid=0, zmin=-limit, zmax=limit, text=text,
                             texttemplate="%{text}", hovertemplate="%{y} · %{x}<br>%{text}<extra></extra>", xgap=3, ygap=3,
                             colorbar=dict(title=f"Δ {METRIC_LABELS[metric]}")))
    fig.update_layout(title=f"Effects on {METRIC_LABELS[metric]}: colour where a verdict holds, grey where none",
                      yaxis=dict(autorange="reversed"), xaxis=dict(side="top"))
    return page.figure(fig, height=160 + 70 * len(archs))


def _curves(page: _Page, curves: pd.DataFrame) -> str:
    if curves.empty:
        return _note("No per-epoch curves in the run records.")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss (solid: train, dashed: val)", "val mIoU"))
    archs = list(dict.fromkeys(curves["arch"]))
    owner: list[str] = []  # the architecture of each trace, for the buttons
    for arch in archs:
        a = curves[curves["arch"] == arch]
        cells = list(dict.fromkeys(a["cell"]))
        for ci, cell in enumerate(cells):
            color = COLORS[ci % len(COLORS)]
            for si, (key, r) in enumerate(a[a["cell"] == cell].groupby("key", sort=False)):
                r = r.sort_values("epoch")
                name, common = esc(f"{cell} (seed {r['seed'].iloc[0]})"), dict(legendgroup=esc(cell), line=dict(color=color))
                fig.add_trace(go.Scatter(x=r["epoch"], y=r["train_loss"], name=esc(cell), showlegend=si == 0,
                                         hovertext=name, **common), 1, 1)
                fig.add_trace(go.Scatter(x=r["epoch"], y=r["val_loss"], name=name, showlegend=False,
                                         line=dict(color=color, dash="dash"), legendgroup=esc(cell)), 1, 1)
                fig.add_trace(go.Scatter(x=r["epoch"], y=r["val_miou"], name=name, showlegend=False, **common), 1, 2)
                owner += [arch] * 3
        best = a[a["epoch"] == a["best_epoch"]]
        stop = a[(a["epoch"] == a["stopped_epoch"]) & (a["stopped_epoch"] < a["max_epochs"])]
        fig.add_trace(go.Scatter(x=best["epoch"], y=best["val_miou"], mode="markers", name="best epoch (kept)",
                                 marker=dict(symbol="star", size=13, color="gold", line=dict(width=1, color="black")),
                                 legendgroup="marks", showlegend=True), 1, 2)
        fig.add_trace(go.Scatter(x=stop["epoch"], y=stop["val_loss"], mode="markers", name="early stop",
                                 marker=dict(symbol="x", size=11, color="black"), legendgroup="marks"), 1, 1)
        owner += [arch] * 2
    for i, trace in enumerate(fig.data):
        trace.visible = owner[i] == archs[0]
    buttons = [dict(label=esc(arch), method="update", args=[{"visible": [o == arch for o in owner]}]) for arch in archs]
    fig.update_layout(updatemenus=[dict(type="buttons", direction="right", buttons=buttons, x=0, y=1.18,
                                        xanchor="left", yanchor="bottom", showactive=True)],
                      legend=dict(font=dict(size=10)), margin=dict(t=90))
    fig.update_xaxes(title_text="epoch")
    return page.figure(fig, height=480)


def _heatmap(page: _Page, table: pd.DataFrame) -> str:
    if table.empty:
        return _note("No per-class IoU in the run records.")
    z = table.to_numpy(dtype=float)
    fig = go.Figure(go.Heatmap(
        z=z, x=[esc(c) for c in table.columns], y=[esc(c) for c in table.index], zmin=0, zmax=1, colorscale="Viridis",
        text=[[("" if math.isnan(v) else f"{v:.2f}") for v in row] for row in z], texttemplate="%{text}",
        hovertemplate="%{y}<br>%{x}: %{z:.3f}<extra></extra>", colorbar=dict(title="IoU")))
    fig.update_layout(yaxis=dict(autorange="reversed"), xaxis=dict(side="top"))
    return page.figure(fig, height=120 + 26 * len(table))


def _gallery(page: _Page, study: Study, runs: pd.DataFrame) -> str:
    from ablate.predict import colorize

    g = analysis.gallery(study, runs, n_images=GALLERY_IMAGES, cache_dir=page.results_dir / ".cache")
    notes = "".join(_note(n) for n in g.notes)
    if not g.images:
        return notes or _note("No images to show.")
    names = g.class_names
    palette = colorize(np.arange(max(len(names), 1)))
    legend = "".join(f'<span class="swatch"><i style="background:rgb{tuple(int(c) for c in palette[k])}"></i>{esc(n)}</span>'
                     for k, n in enumerate(names))
    legend += ('<span class="swatch"><i style="background:rgb' + str(tuple(int(c) for c in colorize(np.array(255))))
               + '"></i>void (not scored)</span>')
    head = "<th>image</th><th>ground truth</th>" + "".join(f"<th>{esc(label)}</th>" for label, _ in g.predictions)
    rows = ""
    for i, image_id in enumerate(g.image_ids):
        truth = g.truths[i]
        cells = [f'<img src="{_png_uri(g.images[i])}" alt="image"><div>{esc(image_id)}</div>',
                 f'<img src="{_png_uri(colorize(truth))}" alt="ground truth"><div>{esc(_present(truth, names))}</div>']
        for _, masks in g.predictions:
            cells.append(f'<img src="{_png_uri(colorize(masks[i]))}" alt="prediction"><div>{esc(_present(masks[i], names))}</div>')
        rows += "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
    return (f'<div class="legend">{legend}</div>{notes}<div class="scroll"><table class="gallery">'
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")


def _present(mask: np.ndarray, names: list[str]) -> str:
    return ", ".join(names[k] if k < len(names) else f"class {k}" for k in np.unique(mask).tolist() if k != 255)


def _pareto(page: _Page, cost: pd.DataFrame) -> str:
    if cost.empty:
        return ""
    label = METRIC_LABELS[cost["metric"].iloc[0]]
    fig = go.Figure()
    for i, (arch, g) in enumerate(cost.groupby("arch", sort=False)):
        fig.add_trace(go.Scatter(
            x=g["seconds"], y=g["quality"], mode="markers", name=esc(arch), marker=dict(size=10, color=COLORS[i % len(COLORS)]),
            error_y=dict(type="data", symmetric=False, array=(g["ci_high"] - g["quality"]).fillna(0),
                         arrayminus=(g["quality"] - g["ci_low"]).fillna(0)),
            text=[esc(c) for c in g["cell"]], customdata=g["images_per_second"],
            hovertemplate="%{text}<br>%{x:.1f} s, %{customdata:.0f} img/s<br>" + esc(label) + " %{y:.3f}<extra></extra>"))
    front = cost[cost["pareto"]].sort_values("seconds")
    fig.add_trace(go.Scatter(x=front["seconds"], y=front["quality"], mode="lines", name="Pareto front",
                             line=dict(color="black", dash="dot", shape="hv")))
    fig.update_layout(xaxis_title="seconds per run (mean over seeds)", yaxis_title=label)
    rows = [[(esc(r["cell"]), r["cell"]), (_num(r["seconds"], 1), r["seconds"]), (_num(r["images_per_second"], 0), r["images_per_second"]),
             (_with_ci(r["quality"], r["ci_low"], r["ci_high"], r["n"]), r["quality"])]
            for r in front.to_dict("records")]
    return page.figure(fig, height=460) + "<h4>Cells on the front</h4>" + _table(["cell", "seconds", "images/s", label], rows)


def _failures(study: Study) -> str:
    f = analysis.failures(study)
    if f.empty:
        return "<p>None.</p>"
    rows = [[(esc(r["label"]), r["label"]), (esc(r["reason"]), r["reason"]),
             (f"<pre>{esc(r['traceback'])}</pre>" if r["traceback"] else "–", "")] for r in f.to_dict("records")]
    return _table(["run", "reason", "traceback (last lines)"], rows, sortable=False)


# --------------------------------------------------------------------------- tune
def _tune_study(page: _Page, study: Study, runs: pd.DataFrame, storage: str | None) -> str:
    sid = _anchor(study.name)
    ostudy, why = dashboard.open_optuna(study, storage or study.storage_url)
    space = study.meta.get("space") or study.meta.get("definition")
    overview = _overview(study) + (f"<p>Search space:</p><pre>{esc(json.dumps(space, indent=1, default=str))}</pre>" if space else "")
    parts = [
        _section(f"{sid}-overview", "1. Overview", "What was searched, on what data and hardware, and how many trials finished.",
                 overview),
        _section(f"{sid}-trials", "2. Best trials",
                 "The complete trials with the highest val mIoU (pruned trials stopped early and are not ranked).",
                 _trials_table(study, runs)),
        _section(f"{sid}-search", "3. Search",
                 "How the search progressed, which hyperparameters mattered, and how many trials a search of this kind "
                 "needs before its best result stops improving.", _tune_figures(page, study, ostudy, why)),
        _section(f"{sid}-gallery", "4. Prediction gallery",
                 "A few fixed validation images, their ground truth, and the best trial's prediction.",
                 _gallery(page, study, runs) if not runs.empty else _note("No complete trial yet.")),
        _section(f"{sid}-failures", "5. Failures", "Trials that crashed or diverged, with the reason.", _failures(study)),
    ]
    return _study_block(study, parts)


def _trials_table(study: Study, runs: pd.DataFrame) -> str:
    if runs.empty:
        return _note("No complete trial yet.")
    top = runs.assign(_v=pd.to_numeric(runs["val_miou"], errors="coerce")).sort_values("_v", ascending=False).head(15)
    params = [c for c in top.columns if c.startswith("params_")]
    headers = ["trial", "val mIoU", "test mIoU", "epochs", "seconds", *(p[len("params_"):] for p in params)]
    rows = []
    for r in top.to_dict("records"):
        row = [(esc(r["number"]), r["number"]), (_num(r.get("val_miou")), r.get("val_miou")),
               (_num(r.get("test_miou")), r.get("test_miou")), (esc(r.get("epochs", "–")), r.get("epochs")),
               (_num(r.get("seconds"), 1), r.get("seconds"))]
        row += [(esc(_short(r[p])), r[p]) for p in params]
        rows.append(row)
    return _table(headers, rows)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _tune_figures(page: _Page, study: Study, ostudy, why: str) -> str:
    out = ""
    trials = study.table
    history = analysis.best_so_far(trials)
    fig = go.Figure()
    done = history[history["state"] == "COMPLETE"]
    pruned = trials[analysis.trial_states(trials) == "PRUNED"]
    fig.add_trace(go.Scatter(x=done["number"], y=done["value"], mode="markers", name="complete trial"))
    fig.add_trace(go.Scatter(x=pruned["number"], y=pd.to_numeric(pruned["val_miou"], errors="coerce"), mode="markers",
                             marker=dict(symbol="x", color="#999"), name="pruned trial (val mIoU when stopped)"))
    fig.add_trace(go.Scatter(x=history["number"], y=history["best_so_far"], mode="lines", line_shape="hv", name="best so far"))
    fig.update_layout(xaxis_title="trial number", yaxis_title="val mIoU")
    out += ("<h4>Optimization history</h4><p class='explain'>Every trial's val mIoU in the order the trials ran, and the "
            "best complete trial so far.</p>" + page.figure(fig, height=380))

    curve = analysis.expected_max(done["value"])
    if not curve.empty:
        fig = go.Figure()
        upper, lower = curve["expected_max"] + curve["std"], curve["expected_max"] - curve["std"]
        fig.add_trace(go.Scatter(x=list(curve["n"]) + list(curve["n"])[::-1], y=list(upper) + list(lower)[::-1],
                                 fill="toself", line=dict(width=0), fillcolor="rgba(31,119,180,0.2)", name="± 1 std"))
        fig.add_trace(go.Scatter(x=curve["n"], y=curve["expected_max"], mode="lines+markers", name="expected best"))
        fig.update_layout(title="Expected best val mIoU vs number of trials", xaxis_title="trials (budget)",
                          yaxis_title="expected best val mIoU")
        out += ("<h4>Expected best vs budget</h4><p class='explain'>Dodge et al. (2019), “Show Your Work”: the expected "
                f"best val mIoU of a search with n trials, from the {len(done)} complete trials observed "
                "(E[max of n] = Σ v<sub>(i)</sub> [(i/N)<sup>n</sup> − ((i−1)/N)<sup>n</sup>]); a curve still rising at "
                "the right edge means more trials would likely help.</p>" + page.figure(fig, height=380))

    if ostudy is None:
        return out + _note(f"Optuna figures skipped: {why}")
    import optuna.visualization as ov

    imp = analysis.param_importances(ostudy)
    out += f"<h4>Parameter importances</h4><p class='explain'>Evaluator: {esc(analysis.IMPORTANCE_EVALUATOR)}.</p>"
    if imp.empty:
        out += _note("Too few complete trials to estimate importances.")
    else:
        fig = go.Figure(go.Bar(x=imp["importance"], y=[esc(p) for p in imp["param"]], orientation="h"))
        fig.update_layout(xaxis_title="importance for val mIoU (sums to 1)", yaxis=dict(autorange="reversed"))
        out += page.figure(fig, height=120 + 30 * len(imp))
    params = set().union(*(t.params for t in ostudy.trials)) if ostudy.trials else set()
    plots = [("Intermediate values", "Val mIoU after each epoch of every trial; pruned trials stop early.",
              ov.plot_intermediate_values, {}),
             ("Parallel coordinates", "Each line is a trial, coloured by val mIoU: which parameter values the good "
              "trials share.", ov.plot_parallel_coordinate, {})]
    if {"lr", "batch_size"} <= params:
        plots.append(("Learning rate × batch size", "Val mIoU interpolated over the two parameters (Optuna contour).",
                      ov.plot_contour, {"params": ["lr", "batch_size"]}))
    for title, explanation, plot, kwargs in plots:
        with analysis.quiet_optuna():
            try:
                fig = plot(ostudy, **kwargs)
            except (ValueError, RuntimeError) as exc:
                out += f"<h4>{esc(title)}</h4>" + _note(f"not drawn: {exc}")
                continue
        out += f"<h4>{esc(title)}</h4><p class='explain'>{esc(explanation)}</p>" + page.figure(fig, height=420)
    return out


# --------------------------------------------------------------------------- document
def _document(studies: list[Study], bodies: list[str]) -> str:
    from plotly.offline import get_plotlyjs

    names = ", ".join(s.name for s in studies)
    toc = "".join(f'<li><a href="#{_anchor(s.name)}">{esc(s.kind)} study {esc(s.name)}</a></li>' for s in studies)
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ablate report: {esc(names)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<header><h1>ablate report: {esc(names)}</h1>
<p class="explain">Which training choices help, on which architecture, and by how much. Numbers are means over
seeds with, from 2 seeds on, a 95% Student-t interval [low, high]; an effect is called real only with 3 or more
paired seeds, an interval that excludes 0 and a Holm-corrected p below 0.05 (each study's Findings panel states
its rules and what its seeds allow). Written {esc(stamp)} by ablate {esc(__version__)}.</p><nav><ul>{toc}</ul></nav></header>
<main>{"".join(bodies)}</main>
<script>{_SORT_JS}</script>
</body></html>
"""


_CSS = """
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

_SORT_JS = """
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
