"""Report stage, the sections a grid and a tune study share: the overview, the Findings panel,
the prediction gallery and the failures, each drawn from what `ablate.analysis` computed."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ablate import analysis
from ablate.analysis import METRIC_LABELS
from ablate.report.html import code_html, duration, esc, note, png_uri, table
from ablate.results import Study


def overview(study: Study, ov: dict, setup: pd.DataFrame) -> str:
    """What was trained, on what data and hardware, and how much of it finished
    (`analysis.overview`, `analysis.training_setup`)."""
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
        ("Seeds", seeds_text(ov["seeds"]) + per_model_seeds(ov.get("seeds_per_model") or {})),
        ("Training", training_setup(setup)),
        (unit.capitalize(), counts),
        ("Total compute", f"{duration(ov['total_seconds'])} (sum of run wall times)"),
        ("Storage", f"<code>{esc(ov['storage'] or '–')}</code>"),
        ("Folder", f"<code>{esc(study.folder)}</code>"),
    ]
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def training_setup(setup: pd.DataFrame) -> str:
    """Per architecture: epoch budget, early-stopping rule, starting weights, metric resolution."""
    if setup.empty:
        return "–"
    items = "".join(f"<li><b>{esc(r.model)}</b>: {esc(r.epochs)} epochs; early stopping {esc(r.early_stopping)}; "
                    f"weights {esc(r.weights)}; val/test metrics at {esc(r.metrics)} resolution</li>"
                    for r in setup.itertuples())
    return f"<ul>{items}</ul>"


def per_model_seeds(counts: dict[str, int]) -> str:
    """'; per architecture: baseline 3, unet 10' where architectures completed different numbers
    of seeds (sequential seeds stop them apart)."""
    return ("; per architecture: " + ", ".join(f"{esc(m)} {n}" for m, n in counts.items())) if counts else ""


def seeds_text(seeds: list[int]) -> str:
    """'1 seed (0)', '3 seeds (0, 1, 2)' — never a bare seed number that reads as a count."""
    if not seeds:
        return "–"
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"


def findings(f: analysis.Findings) -> str:
    """The panel at the top: banners (seeds, plan), the rules, then per architecture its
    decisions as a compact table (effect, verdict, estimate with its 95% interval, seeds), its
    stage (sequential seeds) and its flagged cells."""
    banners = []
    if f.n_max == 1:
        banners.append("One seed per cell: no intervals, no p-values and no verdicts anywhere in this report; "
                       "differences below are single runs and cannot be told from seed noise.")
    if f.seeds:
        banners.append(f"Not enough seeds for a verdict: the smallest cell has n={f.seeds['n_min']} "
                       f"({f.seeds['target']} paired seeds needed). {code_html(f.seeds['text'])}.")
    body = "".join(f'<p class="banner">{b}</p>' for b in banners) + f'<p class="explain">{esc(analysis.rules_text(f))}</p>'
    if f.design:
        body += f'<p class="explain"><b>Design.</b> {esc(f.design[0])}</p>'
        if len(f.design) > 1:
            body += f"<pre class='design'>{esc(chr(10).join(f.design[1:]))}</pre>"
    for a in f.archs:
        stage = f" <span class='stage'>— {esc(a.stage)}</span>" if a.stage else ""
        flags = "".join(f"<li class='flag'>{esc(what)}: {esc(', '.join(cells))}</li>"
                        for what, cells in flag_groups(a.flagged).items())
        body += f"<h4>{esc(a.arch)}{stage}</h4>" + decisions_table(a) + (f"<ul>{flags}</ul>" if flags else "")
    return f'<div class="findings">{body}</div>'


def decisions_table(a: analysis.ArchFindings) -> str:
    """One architecture's main effects: effect, verdict, estimate [95% CI], seeds, the test."""
    if not a.decisions:
        return note("No main effect could be estimated.")
    rows = []
    for r in a.decisions:
        word = r["verdict"]
        shown = analysis.VERDICT_SHORT.get(word, word).replace("δ", f"δ = {r.get('min_effect', 0.01):g}")
        rows.append([(esc(effect_name(r)), effect_name(r)),
                     (f"<span class='v-{esc(word.split()[0])}'>{esc(shown)}</span>", word),
                     (esc(analysis.interval_text(r["estimate"], r["ci_low"], r["ci_high"])), r["estimate"]),
                     (esc(analysis.seeds_cell(r)), r["n"]), (esc(_test_cell(r)), "")])
    return table(["effect", "verdict", f"Δ {METRIC_LABELS[a.metric]} [95% CI]", "seeds", "test"], rows,
                 sortable=False)


def _test_cell(r: dict) -> str:
    return analysis.test_text(r) if r["verdict"] in (*analysis.DECIDED, "inconclusive") else "–"


def effect_name(row: dict) -> str:
    """'augmentation', 'loss = dice vs ce' (effects tables written before factors: the toggle's name)."""
    return analysis.effect_label(row)


def flag_groups(flagged: pd.DataFrame) -> dict[str, list[str]]:
    """The flagged cells (`analysis.cell_flags` rows) grouped by what they are flagged for."""
    groups: dict[str, list[str]] = {}
    for r in flagged.to_dict("records"):
        cell = r["cell"].split(" · ", 1)[-1]
        if r["did_not_learn"]:
            groups.setdefault("Did not learn", []).append(cell)
        elif r["n_did_not_learn"]:
            groups.setdefault("Some seeds did not learn", []).append(f"{cell} ({r['n_did_not_learn']}/{r['n']})")
        if r["n_best_is_last"]:
            groups.setdefault("Still improving at the last epoch (budget-limited)", []).append(
                f"{cell} ({r['n_best_is_last']}/{r['n']})")
        if r["n_early_stopped"]:
            groups.setdefault("Early-stopped", []).append(f"{cell} ({r['n_early_stopped']}/{r['n']})")
    return groups


def gallery(g: analysis.Gallery) -> str:
    """The gallery as a table: image, ground truth, then each chosen run's prediction, with
    the colour legend and the notes on what could not be shown."""
    from ablate.predict import colorize  # the palette

    notes = "".join(note(n) for n in g.notes)
    if not g.images:
        return notes or note("No images to show.")
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
        cells = [f'<img src="{png_uri(g.images[i])}" alt="image"><div>{esc(image_id)}</div>',
                 f'<img src="{png_uri(colorize(truth))}" alt="ground truth"><div>{esc(present(truth, names))}</div>']
        for _, masks in g.predictions:
            cells.append(f'<img src="{png_uri(colorize(masks[i]))}" alt="prediction"><div>{esc(present(masks[i], names))}</div>')
        rows += "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
    return (f'<div class="legend">{legend}</div>{notes}<div class="scroll"><table class="gallery">'
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")


def present(mask: np.ndarray, names: list[str]) -> str:
    """The names of the classes a mask holds (void left out)."""
    return ", ".join(names[k] if k < len(names) else f"class {k}" for k in np.unique(mask).tolist() if k != 255)


def failures(f: pd.DataFrame) -> str:
    """The failed runs (`analysis.failures`): reason and the end of the traceback."""
    if f.empty:
        return "<p>None.</p>"
    rows = [[(esc(r["label"]), r["label"]), (esc(r["reason"]), r["reason"]),
             (f"<pre>{esc(r['traceback'])}</pre>" if r["traceback"] else "–", "")] for r in f.to_dict("records")]
    return table(["run", "reason", "traceback (last lines)"], rows, sortable=False)
