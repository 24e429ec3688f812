"""`ablate tune --confirm K`: the best K configurations rerun over fresh seeds in stages until
the winner is decided against each of the others (beats, equivalent within δ, undecided); the
decision from synthetic numbers, the runs and looks kept in the storage (a rerun continues and
never decides again), and the decision in the command's output and the tune report."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from test_tune import _as_fit, _fake_record

from ablate import stats
from ablate import tune as tuning
from ablate.cli import main
from ablate.config import TrainConfig
from ablate.errors import AblateError
from ablate.report import write_report
from ablate.results.trials import CONFIRM_ATTR
from ablate.tune import confirm as confirming


# --------------------------------------------------------------------------- the decision, from numbers
def _values(**per_trial: list[float]) -> dict[int, dict[int, float]]:
    """{trial number: {seed: value}} from lists of values for seeds 1, 2, ..."""
    return {int(k[1:]): {s + 1: v for s, v in enumerate(vals)} for k, vals in per_trial.items()}


def test_a_clear_winner_is_decided_at_three_seeds():
    values = _values(t12=[0.62, 0.60, 0.61], t7=[0.52, 0.51, 0.53])
    look = tuning.take_look(values, [12, 7], 3, [], 0.01)
    [row] = look["comparisons"]
    # one comparison: level α; the first of the looks at 3..10 seeds spends Pocock's share of it
    assert look["level"] == stats.ALPHA and look["threshold"] == pytest.approx(stats.spent(0.3))
    assert row["verdict"] == stats.HELPS and row["pairs"] == 3
    assert row["estimate"] == pytest.approx(np.mean([0.10, 0.09, 0.08]))
    assert row["ci95"] == pytest.approx(list(stats.t_interval([0.10, 0.09, 0.08])))
    assert confirming.is_done([look])
    conf = {"candidates": [{"number": 12, "params": {"lr": 3e-3, "batch_size": 8}, "value": 0.6},
                           {"number": 7, "params": {"lr": 1e-3, "batch_size": 16}, "value": 0.58}],
            "delta": 0.01, "seeds": list(range(1, 11)), "looks": [look], "done": True}
    first = tuning.sentences(conf)[0]
    assert first == ("Confirmed over 3 seeds: trial 12 (lr 0.003, batch_size 8) beats trial 7 by +0.090 val mIoU "
                     "[95% CI +0.065, +0.115].")


def test_identical_values_have_zero_spread_and_no_verdict():
    """The seed does not vary training: a constant difference is no evidence (its t-test p
    would be 0), so no verdict, and no more seeds are spent on it."""
    values = _values(t3=[0.6, 0.6, 0.6], t1=[0.55, 0.55, 0.55])
    look = tuning.take_look(values, [3, 1], 3, [], 0.01)
    [row] = look["comparisons"]
    assert row["verdict"] == confirming.ZERO_SPREAD and row["p_diff"] is None
    # equal differences but for float rounding (0.05 - 1e-17 ...) are no replicates either
    rounded = tuning.take_look(_values(t3=[0.5, 0.6, 0.7], t1=[0.45, 0.55, 0.65]), [3, 1], 3, [], 0.01)
    assert rounded["comparisons"][0]["verdict"] == confirming.ZERO_SPREAD
    assert confirming.is_done([look])
    conf = {"candidates": [{"number": 3, "params": {"lr": 1e-3}, "value": 0.6}, {"number": 1, "params": {}, "value": 0}],
            "delta": 0.01, "seeds": list(range(1, 11)), "looks": [look], "done": True}
    assert tuning.sentences(conf)[0].startswith("No verdict for trial 3 (lr 0.001) vs trial 1: all 3 seeds gave the "
                                                "same difference (+0.050)")


def test_tiny_differences_are_equivalent_within_delta_and_noisy_ones_stay_undecided():
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.02, 10)
    close = _values(t1=list(base + rng.normal(0, 0.001, 10)), t2=list(base))
    noisy = _values(t1=list(base + rng.normal(0.005, 0.03, 10)), t2=list(base))
    looks_close, looks_noisy, previous = [], [], []
    for n in tuning.LOOKS:
        seeds = range(1, n + 1)
        cut = lambda v: {t: {s: x for s, x in d.items() if s in seeds} for t, d in v.items()}  # noqa: E731
        looks_close.append(tuning.take_look(cut(close), [1, 2], n, previous, 0.01))
        looks_noisy.append(tuning.take_look(cut(noisy), [1, 2], n, previous, 0.01))
        previous.append(n)
    n, row = confirming.outcomes(looks_close)[2]
    assert row["verdict"] == stats.EQUIVALENT and n == 3  # decided at the first look: no more seeds needed
    assert -0.01 < row["ci90"][0] < row["ci90"][1] < 0.01
    n, row = confirming.outcomes(looks_noisy)[2]
    assert row["verdict"] == stats.INCONCLUSIVE and n == 10 and confirming.is_done(looks_noisy)
    assert not confirming.is_done(looks_noisy[:3])  # undecided before the last look: seeds are added
    conf = {"candidates": [{"number": 1, "params": {}, "value": 0}, {"number": 2, "params": {}, "value": 0}],
            "delta": 0.01, "seeds": list(range(1, 11)), "looks": looks_noisy, "done": True}
    lo, hi = row["ci95"]
    assert tuning.sentences(conf)[0] == (f"Undecided after 10 seeds: trial 1 − trial 2 = {row['estimate']:+.3f} val mIoU "
                                         f"[95% CI {lo:+.3f}, {hi:+.3f}].")


def test_a_runner_up_that_beats_the_winner_is_said_so():
    values = _values(t4=[0.50, 0.49, 0.51], t9=[0.60, 0.58, 0.61])
    look = tuning.take_look(values, [4, 9], 3, [], 0.01)
    conf = {"candidates": [{"number": 4, "params": {}, "value": 0.7}, {"number": 9, "params": {"lr": 0.01}, "value": 0.6}],
            "delta": 0.01, "seeds": list(range(1, 11)), "looks": [look], "done": True}
    assert look["comparisons"][0]["verdict"] == stats.HURTS
    assert tuning.sentences(conf)[0].startswith("Not confirmed over 3 seeds: trial 9 (lr 0.01) beats the search's best, "
                                                "trial 4, by +0.097 val mIoU [95% CI +")


def test_a_family_of_comparisons_is_decided_together_and_keeps_first_verdicts():
    """K = 3: the clear comparison is decided at 3 seeds, the noisy one is not, so seeds are
    added; the first verdict stands even if a later look would not reach it."""
    values = _values(t1=[0.60, 0.61, 0.62], t2=[0.50, 0.52, 0.51], t3=[0.55, 0.66, 0.58])
    first = tuning.take_look(values, [1, 2, 3], 3, [], 0.01)
    assert [r["verdict"] for r in first["comparisons"]] == [stats.HELPS, stats.INCONCLUSIVE]
    assert not confirming.is_done([first])
    later = {**first, "n": 5, "comparisons": [{**r, "verdict": stats.INCONCLUSIVE} for r in first["comparisons"]]}
    outcome = confirming.outcomes([first, later])
    assert outcome[2][0] == 3 and outcome[2][1]["verdict"] == stats.HELPS
    assert outcome[3][0] == 5


def test_the_family_keeps_its_error_rate_over_every_look():
    """600 confirmations of K = 3 whose truth sits on the boundary of both wrong answers: the
    winner equals trial 2 (helps / hurts would be false) and leads trial 3 by exactly δ
    (equivalent would be false). Over every look the share with any false verdict stays at
    about α or less; dropping the group-sequential thresholds (testing each look at α/2)
    makes it 9% (55 of 600)."""
    rng, delta, false = np.random.default_rng(1), 0.01, 0
    for _ in range(600):
        base = rng.normal(0.5, 0.02, 10)
        values = {1: base + rng.normal(0, 0.01, 10), 2: base + rng.normal(0, 0.01, 10),
                  3: base - delta + rng.normal(0, 0.01, 10)}
        looks = []
        for n in tuning.LOOKS:
            cut = {t: {s: float(v[s]) for s in range(n)} for t, v in values.items()}
            looks.append(tuning.take_look(cut, [1, 2, 3], n, [lk["n"] for lk in looks], delta))
        assert looks[0]["level"] == stats.ALPHA / 2
        words = {other: row["verdict"] for other, (_, row) in confirming.outcomes(looks).items()}
        false += words[2] in (stats.HELPS, stats.HURTS) or words[3] == stats.EQUIVALENT
    assert false / 600 <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 600)


def test_a_bound_next_to_zero_keeps_its_sign():
    assert confirming._signed(0.0004) == "+0.0004" and confirming._signed(-0.00004) == "-0.00004"
    assert confirming._signed(0.031) == "+0.031" and confirming._signed(0.0) == "+0.000"


# --------------------------------------------------------------------------- runs in the storage
SPACE = {"batch_size": tuning.Param(choices=(8, 16, 32), rule="a positive integer")}
LEVEL = {8: 0.6, 16: 0.5, 32: 0.4}  # what each configuration scores, whatever the seed, give or take noise


def _noisy_fit(seen: list, *, noise: float = 0.003, flat: bool = False):
    """A fake engine: val mIoU by batch size, plus noise drawn from (batch size, seed)."""
    def fit(config, dataset, **kwargs):
        seen.append(config)
        jitter = 0.0 if flat else random.Random(f"{config.batch_size}-{config.seed}").uniform(-noise, noise)
        return _fake_record(config, miou=LEVEL[config.batch_size] + jitter)
    return _as_fit(fit)


def _searched(tmp_path: Path, cache_dir: Path, **kw) -> tuple[tuning.TuneSpec, optuna.Study]:
    """A tune study whose search already ran: trials 0-2 with batch 16, 8, 32 (8 the best)."""
    base = TrainConfig(model="unet", model_args={"base_channels": 4}, image_size=(32, 32), epochs=2)
    spec = tuning.TuneSpec(study_name="c", storage=f"sqlite:///{tmp_path}/c.db", results_dir=tmp_path, space=SPACE,
                           base=base, n_trials=3, cache_dir=cache_dir, **{"confirm": 2, **kw})
    study = tuning.open_study(spec)
    for batch in (16, 8, 32):
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=LEVEL[batch], params={"batch_size": batch},
            distributions={"batch_size": CategoricalDistribution([8, 16, 32])}))
    return spec, study


def _runs(spec: tuning.TuneSpec) -> list:
    return optuna.load_study(study_name="c-confirm", storage=spec.storage).trials


def test_confirm_reruns_the_best_two_over_fresh_seeds_and_a_rerun_runs_nothing(tmp_path, monkeypatch, cache_dir):
    spec, study = _searched(tmp_path, cache_dir)
    dataset = tuning.load_dataset_for(spec)
    seen: list[TrainConfig] = []
    monkeypatch.setattr("ablate.engine.fit", _noisy_fit(seen))
    conf = tuning.confirm_winner(spec, study, dataset, echo=lambda line: None)
    # the best two, distinct: trial 1 (batch 8) then trial 0 (batch 16); seeds 1-3, never the search's 0
    assert sorted((c.batch_size, c.seed) for c in seen) == [(8, 1), (8, 2), (8, 3), (16, 1), (16, 2), (16, 3)]
    assert all(c.replace(batch_size=16, seed=0) == spec.base.replace(batch_size=16) for c in seen)
    assert [c["number"] for c in conf["candidates"]] == [1, 0] and conf["done"]
    assert [lk["n"] for lk in conf["looks"]] == [3] and conf["looks"][0]["comparisons"][0]["verdict"] == stats.HELPS
    assert conf["sentences"][0].startswith("Confirmed over 3 seeds: trial 1 (batch_size 8) beats trial 0 by +0.1")
    runs = _runs(spec)
    assert sorted((t.user_attrs["confirm_of"], t.user_attrs["seed"], t.state) for t in runs) == [
        (0, s, TrialState.COMPLETE) for s in (1, 2, 3)] + [(1, s, TrialState.COMPLETE) for s in (1, 2, 3)]
    assert all(t.user_attrs["val_miou"] == t.value and t.user_attrs["record"]["config"]["seed"] == t.user_attrs["seed"]
               for t in runs)
    stored = optuna.load_study(study_name="c", storage=spec.storage).user_attrs[CONFIRM_ATTR]
    assert stored == conf  # the tune study holds it: study.json and the report show it
    # A rerun continues the recorded confirmation: no run, the same decision.
    again = tuning.confirm_winner(spec, study, dataset, echo=lambda line: None)
    assert len(seen) == 6 and again == conf and len(_runs(spec)) == 6
    with pytest.raises(AblateError, match=r"^--min-effect 0.02: the confirmation of trials 1, 0 runs with "
                                          r"--min-effect 0.01; rerun with it$"):
        tuning.confirm_winner(dataclasses.replace(spec, min_effect=0.02), study, dataset, echo=lambda line: None)


def test_an_interrupted_confirmation_continues_where_it_stopped(tmp_path, monkeypatch, cache_dir):
    spec, study = _searched(tmp_path, cache_dir)
    dataset = tuning.load_dataset_for(spec)
    seen: list[TrainConfig] = []
    fit = _noisy_fit(seen)

    def interrupted(config, dataset, **kwargs):
        if len(seen) == 2:
            seen.append(config)
            raise KeyboardInterrupt
        return fit(config, dataset, **kwargs)

    monkeypatch.setattr("ablate.engine.fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tuning.confirm_winner(spec, study, dataset, echo=lambda line: None)
    states = [(t.state, t.user_attrs.get("failure_reason")) for t in _runs(spec)]
    assert states == [(TrialState.COMPLETE, None)] * 2 + [(TrialState.FAIL, "interrupted")]
    monkeypatch.setattr("ablate.engine.fit", fit)
    conf = tuning.confirm_winner(spec, study, dataset, echo=lambda line: None)
    assert len(seen) == 3 + 4  # the two finished runs kept, the interrupted one run again
    assert sum(t.state == TrialState.COMPLETE for t in _runs(spec)) == 6 and conf["done"]


def test_seeds_that_do_not_vary_training_stop_with_no_verdict(tmp_path, monkeypatch, cache_dir):
    spec, study = _searched(tmp_path, cache_dir)
    seen: list[TrainConfig] = []
    monkeypatch.setattr("ablate.engine.fit", _noisy_fit(seen, flat=True))
    conf = tuning.confirm_winner(spec, study, tuning.load_dataset_for(spec), echo=lambda line: None)
    assert conf["done"] and len(seen) == 6  # no seeds added: more of the same would not help
    assert conf["looks"][0]["comparisons"][0]["verdict"] == confirming.ZERO_SPREAD
    assert conf["sentences"][0].startswith("No verdict for trial 1 (batch_size 8) vs trial 0")


def test_an_undecided_comparison_adds_seeds_up_to_ten(tmp_path, monkeypatch, cache_dir):
    """Two configurations 0.1 apart with noise of ±0.3: nothing is decided before 10 seeds."""
    spec, study = _searched(tmp_path, cache_dir)
    seen: list[TrainConfig] = []
    monkeypatch.setattr("ablate.engine.fit", _noisy_fit(seen, noise=0.3))
    lines: list[str] = []
    conf = tuning.confirm_winner(spec, study, tuning.load_dataset_for(spec), echo=lines.append)
    assert [lk["n"] for lk in conf["looks"]][0] == 3 and conf["looks"][-1]["n"] <= 10
    assert len(seen) == 2 * conf["looks"][-1]["n"]
    assert sorted({c.seed for c in seen}) == list(range(1, conf["looks"][-1]["n"] + 1))
    assert sum(line.startswith("look at ") for line in lines) == len(conf["looks"])
    if conf["looks"][-1]["comparisons"][0]["verdict"] == stats.INCONCLUSIVE:
        assert conf["looks"][-1]["n"] == 10 and conf["sentences"][0].startswith("Undecided after 10 seeds")


def test_confirm_needs_two_distinct_configurations(tmp_path, cache_dir):
    spec, study = _searched(tmp_path, cache_dir)
    lonely = optuna.create_study(direction="maximize")
    lonely.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5, params={"batch_size": 8},
                                               distributions={"batch_size": CategoricalDistribution([8, 16])}))
    with pytest.raises(AblateError, match="--confirm 2: the search has 1 complete trial"):
        tuning.candidates(lonely, 2)
    assert [c.number for c in tuning.candidates(study, 5)] == [1, 0, 2]  # all there are, best first


# --------------------------------------------------------------------------- the command and the report
@pytest.mark.parametrize("args,message", [
    (["--confirm", "1"], "--confirm must be an integer >= 2"),
    (["--confirm", "-2"], "--confirm must be an integer >= 2"),
    (["--min-effect", "0"], "--min-effect must be a number of val mIoU in (0, 1)"),
])
def test_bad_confirm_options_are_one_line_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(main, ["tune", *args, "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {message}"), result.output
    assert result.stderr.count("\n") == 1 and not (tmp_path / "r").exists()


def test_the_command_prints_the_decision_and_the_report_shows_search_and_confirmation(tmp_path, monkeypatch,
                                                                                         cache_dir):
    seen: list[TrainConfig] = []
    monkeypatch.setattr("ablate.engine.fit", _noisy_fit(seen))
    (tmp_path / "s.toml").write_text('[tune]\nmodel = "unet"\nbase_channels = 4\nbatch_size = [8, 16, 32]\n'
                                     'lr = 1e-3\nweight_decay = 1e-4\n')
    result = CliRunner().invoke(main, ["tune", "--study", str(tmp_path / "s.toml"), "--n-trials", "6", "--epochs", "2",
                                       "--image-size", "32", "--sampler", "random", "--confirm", "2",
                                       "--results-dir", str(tmp_path / "r"), "--study-name", "cli"])
    assert result.exit_code == 0, result.output + str(result.exception)
    study = optuna.load_study(study_name="cli", storage=f"sqlite:///{tmp_path}/r/cli/optuna.db")
    conf = study.user_attrs[CONFIRM_ATTR]
    out = result.output
    assert conf["sentences"][0] in out and out.index("best params:") < out.index(conf["sentences"][0])
    html = write_report(results_dir=tmp_path / "r", study_names=["cli"]).read_text()
    best = tuning.best_trial(study)
    n = sum(t.state in tuning.FINISHED for t in study.trials)
    lead = f"{n} trials searched batch size; best val mIoU {best.value:.4f} at trial {best.number}"
    assert f'<p class="explain">{lead}' in html  # the page opens with the search, not with toggles
    assert "Which training choices help" not in html
    assert "<th>parameter</th><th>distribution</th><th>range or choices</th><th>log scale</th>" in html
    # one row per parameter: its distribution, choices, log scale and the default trial's value
    assert ('<td data-v="batch_size">batch_size</td><td data-v="choice">choice</td><td data-v="8, 16, 32">8, 16, 32</td>'
            '<td data-v="False">no</td><td data-v="16">16</td>') in html
    assert "3. Confirmation of the winner</h3>" in html and conf["sentences"][0].replace("'", "&#x27;") in html
    # each look's p-values beside its group-sequential thresholds (first look of two candidates: Pocock's share of α)
    first = conf["looks"][0]
    assert "<th>threshold (difference / equivalence)</th>" in html
    assert f"{first['threshold']:.4g} / {first['threshold_equiv']:.4g}" in html
