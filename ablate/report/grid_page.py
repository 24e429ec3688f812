"""Report stage, a grid study's page: Findings, overview, the grid table with intervals and
the architecture ranking, the factor effects, learning curves, per-class IoU, the prediction
gallery, quality against cost, and the failures, drawn from an `analysis.GridAnalysis`."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ablate import analysis
from ablate.analysis import METRIC_LABELS
from ablate.config import TOGGLES
from ablate.report.sections import failures, findings, gallery, overview
from ablate.report.html import COLORS, Page, anchor, code_html, esc, note, num, section, study_block, table, with_ci
from ablate.results import Study


def grid_study(page: Page, study: Study, a: analysis.GridAnalysis, shown: analysis.Gallery) -> str:
    """A grid study's page, numbered as its table of contents reads."""
    metric, label, sid = a.metric, METRIC_LABELS[a.metric], anchor(study.name)
    parts = [
        section(f"{sid}-findings", "Findings", "What this study shows, per architecture, by the rules stated here; "
                "the tables below hold every number.", _banner(a.incomplete_note) + findings(a.findings)),
        section(f"{sid}-overview", "1. Overview", "What was trained, on what data and hardware, and how much of it finished.",
                overview(study, a.overview, a.setup)),
        section(f"{sid}-table", "2. Grid table",
                f"One row per cell (architecture × factor setting), over seeds (n finished, named by their seed "
                f"ids): mean and 95% Student-t interval [low, high] over seeds, ordered by {esc(label)}. Δ is the "
                "paired difference to the same architecture's reference cell (every toggle off, every other factor "
                "at its first level), with its 95% interval and P(improve); these comparisons are described, not "
                "tested (no verdict word: the verdicts are the main effects' in Findings).",
                (note(a.comparisons_note) if a.comparisons_note else "")
                + _grid_table(a.stats, a.comparisons, metric, a.flags) + _ranking(page, a.ranking)),
        section(f"{sid}-effects", "3. Factor effects" if _has_factors(a.effects) else "3. Toggle effects",
                f"What switching a toggle on, or a factor from its reference level to another, changes in {esc(label)}, "
                "averaged over the other factors' settings (main effect), and how much one factor's effect depends on "
                "another (interaction), with 95% Student-t intervals over seeds. Coloured: main effects with a "
                "verdict; grey: no verdict (inconclusive, or described only, as interactions are; see Findings for "
                "the rules).",
                _design_note(a.findings) + _effects(page, a.effects, metric)),
        section(f"{sid}-curves", "4. Learning curves",
                "Per-epoch training and validation loss and validation mIoU of every run; pick an architecture with "
                "the buttons. ★ marks the epoch whose checkpoint was kept (best val mIoU), ✕ where early stopping ended "
                "the run.", _curves(page, a.curves)),
        section(f"{sid}-classes", "5. Per-class IoU",
                f"IoU of each class ({esc(metric.split('_')[0])} split) per cell, averaged over seeds: which classes each "
                "setting actually segments. Blank: class absent from the split.",
                _heatmap(page, a.class_iou)),
        section(f"{sid}-gallery", "6. Prediction gallery",
                "A few fixed validation images, their ground truth, and the prediction of each architecture's best cell "
                "(best cell by mean val mIoU; its best seed).", gallery(shown)),
        section(f"{sid}-cost", "7. Quality vs cost",
                f"Mean wall time per run against {esc(label)}; the line joins the Pareto front — cells that no other cell "
                "beats on both time and quality. Wall times include evaluation and vary with the machine's load.",
                _pareto(page, a.cost)),
        section(f"{sid}-failures", "8. Failures",
                "Runs that crashed or diverged, with the reason and the end of the traceback.", failures(a.failures)),
    ]
    return study_block(study, parts)


def _has_factors(effects: pd.DataFrame) -> bool:
    """Whether a factor other than the toggles varies (the section is then 'Factor effects')."""
    return not effects.empty and any(f not in TOGGLES for fs in effects["factors"].astype(str) for f in fs.split())


def _banner(text: str | None) -> str:
    """An analysis warning the reader must not miss (backticks: a command)."""
    return f'<p class="banner">{code_html(text)}</p>' if text else ""


def _design_note(found: analysis.Findings) -> str:
    """The design, where it is not the full factorial: a fractional design's generators and
    aliases, one-at-a-time's blind spot."""
    if not found.design:
        return ""
    rest = f"<pre class='design'>{esc(chr(10).join(found.design[1:]))}</pre>" if len(found.design) > 1 else ""
    return note(found.design[0]) + rest


def _grid_table(stats: pd.DataFrame, comps: pd.DataFrame, metric: str, flags: pd.DataFrame) -> str:
    wide = {(r["cell"], r["metric"]): r for r in stats.to_dict("records")}
    cells = list(dict.fromkeys(stats["cell"]))
    cells.sort(key=lambda c: -wide.get((c, metric), {}).get("mean", -np.inf))
    comp = {r["cell"]: r for r in comps[comps["metric"] == metric].to_dict("records")} if not comps.empty else {}
    flag = dict(zip(flags["cell"], flags["flags"]))
    references = set(comps["baseline"]) if not comps.empty else set()
    headers = ["cell", "n", "seed ids", "val mIoU", "test mIoU", "val pixel acc", "test pixel acc", "seconds / run",
               "images/s", f"Δ {METRIC_LABELS[metric]} vs reference [95% CI]", "P(improve)", "flags"]
    rows = []
    for cell in cells:
        any_row = next(r for (c, _), r in wide.items() if c == cell)
        seeds = any_row["seeds"].split()
        row = [(esc(cell), cell), (str(len(seeds)), len(seeds)), (esc(", ".join(seeds)), any_row["seeds"])]
        for m in ("val_miou", "test_miou", "val_pixel_acc", "test_pixel_acc"):
            r = wide.get((cell, m))
            row.append((with_ci(r["mean"], r["ci_low"], r["ci_high"], r["n"]), r["mean"]) if r else ("–", ""))
        for m, digits in (("seconds", 1), ("images_per_second", 1)):
            r = wide.get((cell, m))
            row.append((num(r["mean"], digits), r["mean"]) if r else ("–", ""))
        c = comp.get(cell)
        if c:
            row += [(with_ci(c["mean_diff"], c["ci_low"], c["ci_high"], c["n_pairs"]), c["mean_diff"]),
                    (num(c["p_improve"], 2) if c["n_pairs"] > 1 else "–", c["p_improve"])]
        else:
            row += [("reference" if cell in references or cell.endswith("no toggles") else "–", 0), ("–", "")]
        row.append((esc(flag.get(cell, "")), flag.get(cell, "")))
        rows.append(row)
    return table(headers, rows)


def _ranking(page: Page, ranking: pd.DataFrame) -> str:
    if ranking.empty:
        return ""
    label = METRIC_LABELS[ranking["metric"].iloc[0]]
    rows = [[(str(r["rank"]), r["rank"]), (esc(r["arch"]), r["arch"]), (esc(r["best_cell"]), r["best_cell"]),
             (with_ci(r["mean"], r["ci_low"], r["ci_high"], r["n"]), r["mean"]), (esc(r["tied_with"] or "–"), r["tied_with"])]
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
            + table(["rank", "architecture", "best cell", label, "overlaps with"], rows, sortable=False)
            + (note("With one seed there are no intervals: the ranking orders means only and cannot tell a real "
                    "difference from seed noise.") if (ranking["n"] < 2).any() else "")
            + page.figure(fig, height=120 + 50 * len(ranking)))


def _effects(page: Page, effects: pd.DataFrame, metric: str) -> str:
    if effects.empty:
        return note("No factor varies in this study, so there are no effects to estimate.")
    e = effects[effects["metric"] == metric]
    out = _effects_matrix(page, e[e["estimate"].notna()], metric)
    out += "<h4>Every effect</h4>" + "".join(_every_effect(arch, g) for arch, g in e.groupby("arch", sort=False))
    out += ("<p class='explain'>Main effect = mean(on) − mean(off) over the other factors' settings (for a factor "
            "with several levels: each level vs the first listed, the reference); interaction A × B = ½ × "
            "[(effect of A with B on) − (effect of A with B off)]. In a fractional design they come from the runs' "
            "±1 contrasts and each estimate also holds the effects it is aliased with (column aliases of "
            "effects.csv); one-at-a-time compares each varied cell with the reference cell. All are computed per seed "
            "(seeds present in every cell of the architecture); the interval is Student t over those per-seed "
            "effects; the main effects' tests and their one family per architecture are in Findings. P(improve) "
            "is the share of seeds whose effect is positive (ties count half). All rows, val and test, are in "
            "effects.csv.</p>")
    return out


def _every_effect(arch: str, g: pd.DataFrame) -> str:
    """One architecture's effects, a sentence each. The cells that did not learn, which every
    effect of a factorial design shares, are named once above the sentences, not in each."""
    unlearned = g["unlearned"].fillna("").astype(str) if "unlearned" in g else pd.Series("", index=g.index)
    shared = unlearned.iloc[0] if unlearned.iloc[0] and (unlearned == unlearned.iloc[0]).all() else ""
    head = f"<p><b>{esc(arch)}</b></p>"
    if shared:
        head += note(f"Cells of {arch} that did not learn, so none of its effects gets a verdict: "
                     f"{shared.replace(f'{arch} · ', '')}.")
    items = "".join(f"<li class='{'verdict' if r['verdict'] in analysis.VERDICT_WORDS else ''}'>"
                    f"{esc(r['sentence'].replace(f' ({shared})', '') if shared else r['sentence'])}</li>"
                    for r in g.to_dict("records"))
    return f"{head}<ul>{items}</ul>"


def _effects_matrix(page: Page, shown: pd.DataFrame, metric: str) -> str:
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


def _curves(page: Page, curves: pd.DataFrame) -> str:
    if curves.empty:
        return note("No per-epoch curves in the run records.")
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


def _heatmap(page: Page, table: pd.DataFrame) -> str:
    if table.empty:
        return note("No per-class IoU in the run records.")
    z = table.to_numpy(dtype=float)
    fig = go.Figure(go.Heatmap(
        z=z, x=[esc(c) for c in table.columns], y=[esc(c) for c in table.index], zmin=0, zmax=1, colorscale="Viridis",
        text=[[("" if math.isnan(v) else f"{v:.2f}") for v in row] for row in z], texttemplate="%{text}",
        hovertemplate="%{y}<br>%{x}: %{z:.3f}<extra></extra>", colorbar=dict(title="IoU")))
    fig.update_layout(yaxis=dict(autorange="reversed"), xaxis=dict(side="top"))
    return page.figure(fig, height=120 + 26 * len(table))


def _pareto(page: Page, cost: pd.DataFrame) -> str:
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
    rows = [[(esc(r["cell"]), r["cell"]), (num(r["seconds"], 1), r["seconds"]), (num(r["images_per_second"], 0), r["images_per_second"]),
             (with_ci(r["quality"], r["ci_low"], r["ci_high"], r["n"]), r["quality"])]
            for r in front.to_dict("records")]
    return page.figure(fig, height=460) + "<h4>Cells on the front</h4>" + table(["cell", "seconds", "images/s", label], rows)
