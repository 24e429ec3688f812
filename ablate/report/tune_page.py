"""Report stage, a tune study's page: its opening line (what was searched, the best value),
overview with the search space, the best trials, the confirmation of the winner over seeds,
the search (history, expected best vs budget, importances and Optuna's own plots), the best
trial's predictions and the failures, drawn from an `analysis.TuneAnalysis` and the study's
meta (study.json: its space, default trial and confirmation, as the tuner recorded them)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from ablate import analysis
from ablate.report.sections import failures, gallery, overview
from ablate.report.html import Page, anchor, esc, note, num, section, study_block, table, with_ci
from ablate.results import Study


def tune_study(page: Page, study: Study, a: analysis.TuneAnalysis, shown: analysis.Gallery, optuna_study,
               why: str) -> str:
    """A tune study's page. Optuna's own plots draw `optuna_study`; without it (`why` says
    why not) they are skipped with a note."""
    sid = anchor(study.name)
    described = f"<p class='lead'>{esc(lead(study))}</p>" + overview(study, a.overview, a.setup) + _space_table(study.meta)
    parts = [
        section(f"{sid}-overview", "1. Overview", "What was searched, on what data and hardware, and how many trials finished.",
                described),
        section(f"{sid}-trials", "2. Best trials",
                "The complete trials with the highest val mIoU (pruned trials stopped early and are not ranked).",
                _trials_table(a)),
        section(f"{sid}-confirm", "3. Confirmation of the winner",
                "The best trial is the largest of many one-seed values, so part of its lead may be its seed's luck. "
                "<code>--confirm K</code> reruns the best K configurations over fresh seeds and compares the winner "
                "with each, paired by seed.", _confirmation(study.meta.get("confirm"))),
        section(f"{sid}-search", "4. Search",
                "How the search progressed, which hyperparameters mattered, and how many trials a search of this kind "
                "needs before its best result stops improving.",
                _history(page, a) + _expected_best(page, a) + _optuna_figures(page, a, optuna_study, why)),
        section(f"{sid}-gallery", "5. Prediction gallery",
                "A few fixed validation images, their ground truth, and the best trial's prediction.",
                gallery(shown) if not a.runs.empty else note("No complete trial yet.")),
        section(f"{sid}-failures", "6. Failures", "Trials that crashed or diverged, with the reason.",
                failures(a.failures)),
    ]
    return study_block(study, parts)


def lead(study: Study) -> str:
    """The page's opening line: how many trials searched which parameters, the best value and
    where, and the confirmation's first sentence when there is one."""
    meta = study.meta
    counts = meta.get("trial_counts") or {}
    finished = (counts.get("complete") or 0) + (counts.get("pruned") or 0)
    names = [name.replace("_", " ") for name in meta.get("space") or {}]
    searched = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names) or "nothing"
    text = f"{finished} trial{'s' * (finished != 1)} searched {searched}"
    best = meta.get("best")
    if best is None:
        return text + "; no trial completed yet."
    test = f" (test mIoU {best['test_miou']:.4f})" if best.get("test_miou") is not None else ""
    text += f"; best val mIoU {best['value']:.4f} at trial {best['number']}{test}."
    confirmation = meta.get("confirm")
    if confirmation and confirmation.get("sentences"):
        text += " " + confirmation["sentences"][0]
    return text


def _space_table(meta: dict) -> str:
    """The search space: each parameter's distribution, its range or choices, and the value
    the default trial (the first) gave it."""
    space, defaults = meta.get("space") or meta.get("definition") or {}, meta.get("defaults") or {}
    if not space:
        return ""
    rows = []
    for name, d in space.items():
        d = d if isinstance(d, dict) else {"type": "?", "choices": d}  # a study.json written by hand
        ranged = d.get("type") == "log-uniform"
        values = f"[{d['low']:g}, {d['high']:g}]" if ranged else ", ".join(map(str, d.get("choices") or []))
        kind = "log-uniform" if ranged else ("choice" if d.get("type") == "choice" else "?")
        default = defaults.get(name)
        rows.append([(esc(name), name), (esc(kind), kind), (esc(values), values), ("yes" if ranged else "no", ranged),
                     (esc("–" if default is None else _short(default)), str(default))])
    return "<h4>Search space</h4>" + table(["parameter", "distribution", "range or choices", "log scale",
                                            "default (first trial)"], rows, sortable=False)


def _confirmation(conf: dict | None) -> str:
    """The confirmation's sentences, each candidate's values over the seeds, and each comparison
    with the winner (difference, intervals, p-values beside the look's thresholds, verdict)."""
    if not conf:
        return note("Not confirmed: rerun the same `ablate tune` command with --confirm 2 to compare the best two "
                    "configurations over seeds.")
    items = "".join(f"<li class='verdict'>{esc(line)}</li>" for line in conf.get("sentences") or [])
    params = {c["number"]: c for c in conf["candidates"]}
    rows = [[(esc(m["number"]), m["number"]), (esc(_short_params(params[m["number"]]["params"])), m["number"]),
             (num(params[m["number"]]["value"], 4), params[m["number"]]["value"]), (esc(m["n"]), m["n"]),
             (with_ci(m["mean"], *(m["ci95"] or (float("nan"), float("nan")))), m["mean"]),
             (num(m["test_mean"]), m["test_mean"])] for m in conf.get("means") or []]
    out = f"<ul>{items}</ul>" + table(["trial", "params", "search val mIoU (one seed; picked it)", "seeds",
                                       "mean val mIoU [95%]", "mean test mIoU"], rows)
    winner = conf["candidates"][0]["number"]
    comparisons = []
    for look in conf.get("looks") or []:
        for r in look["comparisons"]:
            ci = r["ci95"] or (None, None)
            comparisons.append([(esc(look["n"]), look["n"]), (esc(f"{winner} − {r['other']}"), r["other"]),
                                (esc(r["pairs"]), r["pairs"]), (num(r["estimate"], 4), r["estimate"]),
                                (f"[{num(ci[0], 4)}, {num(ci[1], 4)}]", ci[0]), (num(r["p_diff"], 4), r["p_diff"]),
                                (num(r["p_equiv"], 4), r["p_equiv"]),
                                (f"{look['threshold']:.4g} / {look['threshold_equiv']:.4g}", look["threshold"]),
                                (esc(r.get("words", r["verdict"])), r["verdict"])])
    return out + ("<h4>Looks</h4><p class='explain'>Each look's family of comparisons (val mIoU, winner − other, "
                  "paired by seed): each p is decided by the look's group-sequential threshold (level α/(K − 1) "
                  "per comparison, spent over the looks); a comparison keeps the first verdict it gets.</p>"
                  + table(["seeds", "comparison", "pairs", "difference", "95% CI", "p (difference)",
                           "p (equivalence)", "threshold (difference / equivalence)", "verdict"], comparisons)
                  if comparisons else "")


def _short_params(params: dict) -> str:
    return ", ".join(f"{k} {_short(v)}" for k, v in params.items())


def _trials_table(a: analysis.TuneAnalysis) -> str:
    if a.runs.empty:
        return note("No complete trial yet.")
    headers = ["trial", "val mIoU", "test mIoU", "epochs", "seconds", *(p[len("params_"):] for p in a.params)]
    rows = []
    for r in a.top.to_dict("records"):
        row = [(esc(r["number"]), r["number"]), (num(r.get("val_miou")), r.get("val_miou")),
               (num(r.get("test_miou")), r.get("test_miou")), (esc(r.get("epochs", "–")), r.get("epochs")),
               (num(r.get("seconds"), 1), r.get("seconds"))]
        row += [(esc(_short(r[p])), r[p]) for p in a.params]
        rows.append(row)
    return table(headers, rows)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _history(page: Page, a: analysis.TuneAnalysis) -> str:
    """Every trial's val mIoU in the order the trials ran, and the best so far."""
    done = a.history[a.history["state"] == "COMPLETE"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=done["number"], y=done["value"], mode="markers", name="complete trial"))
    fig.add_trace(go.Scatter(x=a.pruned["number"], y=pd.to_numeric(a.pruned["val_miou"], errors="coerce"),
                             mode="markers", marker=dict(symbol="x", color="#999"),
                             name="pruned trial (val mIoU when stopped)"))
    fig.add_trace(go.Scatter(x=a.history["number"], y=a.history["best_so_far"], mode="lines", line_shape="hv",
                             name="best so far"))
    fig.update_layout(xaxis_title="trial number", yaxis_title="val mIoU")
    return ("<h4>Optimization history</h4><p class='explain'>Every trial's val mIoU in the order the trials ran, and the "
            "best complete trial so far.</p>" + page.figure(fig, height=380))


def _expected_best(page: Page, a: analysis.TuneAnalysis) -> str:
    """The expected best val mIoU against the number of trials (Dodge et al. 2019)."""
    curve = a.expected
    if curve.empty:
        return ""
    fig = go.Figure()
    upper, lower = curve["expected_max"] + curve["std"], curve["expected_max"] - curve["std"]
    fig.add_trace(go.Scatter(x=list(curve["n"]) + list(curve["n"])[::-1], y=list(upper) + list(lower)[::-1],
                             fill="toself", line=dict(width=0), fillcolor="rgba(31,119,180,0.2)", name="± 1 std"))
    fig.add_trace(go.Scatter(x=curve["n"], y=curve["expected_max"], mode="lines+markers", name="expected best"))
    fig.update_layout(title="Expected best val mIoU vs number of trials", xaxis_title="trials (budget)",
                      yaxis_title="expected best val mIoU")
    complete = int((a.history["state"] == "COMPLETE").sum())
    return ("<h4>Expected best vs budget</h4><p class='explain'>Dodge et al. (2019), “Show Your Work”: the expected "
            f"best val mIoU of a search with n trials, from the {complete} complete trials observed "
            "(E[max of n] = Σ v<sub>(i)</sub> [(i/N)<sup>n</sup> − ((i−1)/N)<sup>n</sup>]); a curve still rising at "
            "the right edge means more trials would likely help.</p>" + page.figure(fig, height=380))


def _optuna_figures(page: Page, a: analysis.TuneAnalysis, optuna_study, why: str) -> str:
    """The importances, and Optuna's intermediate values, parallel coordinates and (when both
    are searched) lr × batch size contour of `optuna_study`."""
    if optuna_study is None:
        return note(f"Optuna figures skipped: {why}")
    import optuna.visualization as ov

    imp = a.importances
    out = f"<h4>Parameter importances</h4><p class='explain'>Evaluator: {esc(analysis.IMPORTANCE_EVALUATOR)}.</p>"
    if imp is None or imp.empty:
        out += note("Too few complete trials to estimate importances.")
    else:
        fig = go.Figure(go.Bar(x=imp["importance"], y=[esc(p) for p in imp["param"]], orientation="h"))
        fig.update_layout(xaxis_title="importance for val mIoU (sums to 1)", yaxis=dict(autorange="reversed"))
        out += page.figure(fig, height=120 + 30 * len(imp))
    trials = optuna_study.get_trials(deepcopy=False)
    params = set().union(*(t.params for t in trials)) if trials else set()
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
                fig = plot(optuna_study, **kwargs)
            except (ValueError, RuntimeError) as exc:
                out += f"<h4>{esc(title)}</h4>" + note(f"not drawn: {exc}")
                continue
        out += f"<h4>{esc(title)}</h4><p class='explain'>{esc(explanation)}</p>" + page.figure(fig, height=420)
    return out
