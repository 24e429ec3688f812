"""Tuner, the confirmation of its winner (`ablate tune --confirm K`): the best K configurations
of the search rerun over fresh seeds in stages, the winner compared with each of the others
paired by seed, until every comparison is decided or `MAX_SEEDS` seeds are spent.

A search's best is the largest of many noisy values: part of its lead is the luck of its one
seed. The search's seed picked the candidates, so its values are not reused: the seeds here
are the next ones (seed + 1, ...). At each look (`LOOKS`: 3, 5, 7, 10 seeds) the K − 1
comparisons are one family, decided as the grid decides an architecture's main effects
(`decisions.look`): each comparison's paired t-test (difference) and two one-sided
tests within ±δ (equivalence) run at α/(K − 1), each a group-sequential test over the looks
(Lan-DeMets Pocock thresholds, `stats.gs_boundaries`); a comparison keeps the first verdict
it gets. The runs are trials of the study `<study>-confirm` in the tune's storage, claimed
under the tune's lock, and each look is recorded there once taken: a rerun, or another
machine running the same command, continues and never decides a look again.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ablate import record as records
from ablate import decisions, stats, store, workers
from ablate.config import stable_hash
from ablate.errors import AblateError
from ablate.results.best import rank
from ablate.results.trials import CONFIRM_ATTR, TUNE_ATTR
from ablate.tune.outputs import store_record
from ablate.tune.space import config_for
from ablate.tune.spec import TuneSpec
from ablate.tune.study import storage_trial_id, study_lock

LOOKS = (3, 5, 7, 10)  # seeds per candidate at each look
MAX_SEEDS = LOOKS[-1]
SUFFIX = "-confirm"  # the confirmation runs' study: <tune study>-confirm, in the same storage
KIND = "tune-confirm"
ZERO_SPREAD, UNDECIDED = "zero spread", "undecided"
CLOSED = (stats.HELPS, stats.HURTS, stats.EQUIVALENT, ZERO_SPREAD)  # a comparison that needs no more seeds
# a verdict on (winner − other) in the words of a confirmation
WORDS = {stats.HELPS: "the winner is better", stats.HURTS: "the other is better",
         stats.EQUIVALENT: "equivalent within δ", stats.INCONCLUSIVE: UNDECIDED, ZERO_SPREAD: "no verdict (zero spread)"}
POLL_SECONDS = 5.0  # how often to look again while other processes run the runs a look needs


# --------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    number: int  # its trial in the search
    params: dict[str, Any]
    value: float  # the search's val mIoU: what picked it, so never part of the decision


def candidates(study: optuna.Study, k: int) -> list[Candidate]:
    """The best `k` complete trials with distinct params, best first (ties: the lower number);
    fewer when the search has fewer, an error below two."""
    done = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None),
                  key=lambda t: rank(t.value, t.number))
    out, seen = [], set()
    for t in done:
        key = json.dumps(t.params, sort_keys=True, default=str)
        if key not in seen and len(out) < k:
            seen.add(key)
            out.append(Candidate(t.number, dict(t.params), float(t.value)))
    if len(out) < 2:
        raise AblateError(f"--confirm {k}: the search has {len(out)} complete trial(s) with distinct parameters; "
                          "it needs 2 to compare (run more trials)")
    return out


def seeds_for(base_seed: int) -> list[int]:
    """The confirmation's seeds, in the order looks use them: the search's seed + 1, + 2, ..."""
    return [base_seed + i for i in range(1, MAX_SEEDS + 1)]


# --------------------------------------------------------------------------- the decision (numbers only)
def take_look(values: dict[int, dict[int, float]], order: list[int], n: int, previous: list[int],
              delta: float) -> dict:
    """One look at `n` seeds: the winner (`order[0]`) against each other candidate, paired by
    seed over the seeds both finished, judged as one family (`decisions.look`: α/(K − 1) each,
    group-sequential over the looks). `values`: trial number -> {seed: val mIoU} of the look's
    seeds; `previous`: the seed counts of the looks already taken."""
    winner = order[0]
    rows, tested = [], []
    for other in order[1:]:
        seeds = sorted(set(values.get(winner, {})) & set(values.get(other, {})))
        d = np.array([values[winner][s] - values[other][s] for s in seeds], dtype=float)
        flat = _zero_spread(d)
        testable = len(d) >= stats.MIN_VERDICT_N and not flat
        estimate = float(d.mean()) if len(d) else math.nan
        rows.append({"other": other, "pairs": len(d), "estimate": decisions.finite(estimate),
                     "ci95": _interval(d, 0.95), "ci90": _interval(d, 0.90), "zero_spread": flat})
        tested.append({"effect": str(other), "n": len(d), "estimate": estimate, "zero_spread": flat,
                       "p_value": stats.paired_t_p(d) if testable else math.nan,
                       "p_equiv": stats.tost_p(d, delta) if testable else math.nan})
    decision = decisions.look(tested, delta=delta, looks=(*previous, n), n_max=MAX_SEEDS)
    for row in rows:
        word = decision.verdicts[str(row["other"])]
        # as the grid: zero spread closes a comparison only once it has the seeds a verdict needs
        row.update(verdict=word if word in CLOSED else ZERO_SPREAD if word == decisions.ZERO_SPREAD
                   else stats.INCONCLUSIVE,
                   p_diff=decisions.finite(decision.p_diff.get(str(row["other"]), math.nan)),
                   p_equiv=decisions.finite(decision.p_equiv.get(str(row["other"]), math.nan)))
        row["words"] = WORDS[row["verdict"]]
    return {"n": n, "level": decision.level, "threshold": decision.threshold,
            "threshold_equiv": decision.threshold_equiv, "comparisons": rows}


def _zero_spread(d: np.ndarray) -> bool:
    """`stats.zero_spread`, or differences equal but for float rounding (1e-16 apart, not
    replicates either: their t-test p would be ~0)."""
    return stats.zero_spread(d) or (len(d) >= 2 and float(np.ptp(d)) < 1e-9)


def outcomes(looks: list[dict]) -> dict[int, tuple[int, dict]]:
    """Each comparison's outcome over the looks taken: (seeds, row) of the first look that
    closed it, else of the last look (its verdict then stands as undecided)."""
    out: dict[int, tuple[int, dict]] = {}
    for look in looks:
        for row in look["comparisons"]:
            if row["other"] not in out or out[row["other"]][1]["verdict"] not in CLOSED:
                out[row["other"]] = (look["n"], row)
    return out


def is_done(looks: list[dict]) -> bool:
    """Every comparison closed, or the last look taken."""
    return bool(looks) and (looks[-1]["n"] >= MAX_SEEDS
                            or all(row["verdict"] in CLOSED for _, row in outcomes(looks).values()))


def _interval(values, level: float) -> list[float] | None:
    """The t interval as the storage keeps it (a list); None below 2 values."""
    interval = stats.t_interval(values, level=level)
    return None if interval is None else list(interval)


def sentences(conf: dict) -> list[str]:
    """The confirmation in plain sentences: one per comparison (or that it is under way), then
    how it was decided."""
    cands = {c["number"]: c for c in conf["candidates"]}
    winner = conf["candidates"][0]["number"]
    if not conf["done"]:
        n = conf["looks"][-1]["n"] if conf["looks"] else 0
        return [f"Confirmation under way: {n} of up to {MAX_SEEDS} seeds looked at; rerun the same command to continue."]
    out = [_sentence(row, n, winner, cands, conf["delta"]) for n, row in outcomes(conf["looks"]).values()]
    seeds = conf["seeds"]
    k = len(conf["candidates"]) - 1
    out.append(f"Fresh seeds {seeds[0]}–{seeds[-1]} (seed {seeds[0] - 1} picked the candidates), paired by seed; "
               f"{k} comparison{'s' * (k > 1)} with the winner, each a paired t-test and an equivalence test within "
               f"±δ = {conf['delta']:g}, at {f'α/{k} = {stats.ALPHA / k:.4g}' if k > 1 else f'α = {stats.ALPHA:g}'}"
               f"{' each' if k > 1 else ''}, group-sequential over the looks at "
               "3, 5, 7 and 10 seeds (Lan–DeMets Pocock thresholds), so the chance of any false verdict is at most "
               f"α = {stats.ALPHA:g}.")
    return out


def _sentence(row: dict, n: int, winner: int, cands: dict, delta: float) -> str:
    other, verdict, est = row["other"], row["verdict"], row["estimate"]
    w, o = f"trial {winner} ({_params(cands[winner]['params'])})", f"trial {other}"
    if verdict == stats.HELPS:
        lo, hi = row["ci95"]
        return f"Confirmed over {n} seeds: {w} beats {o} by {_signed(est)} val mIoU [95% CI {_signed(lo)}, {_signed(hi)}]."
    if verdict == stats.HURTS:
        lo, hi = row["ci95"]
        return (f"Not confirmed over {n} seeds: {o} ({_params(cands[other]['params'])}) beats the search's best, "
                f"trial {winner}, by {_signed(-est)} val mIoU [95% CI {_signed(-hi)}, {_signed(-lo)}].")
    if verdict == stats.EQUIVALENT:
        lo, hi = row["ci90"]
        return (f"Over {n} seeds, {w} and {o} are equivalent within δ = {delta:g} val mIoU: "
                f"difference {_signed(est)} [90% CI {_signed(lo)}, {_signed(hi)}].")
    if verdict == ZERO_SPREAD:
        return (f"No verdict for {w} vs {o}: all {row['pairs']} seeds gave the same difference ({_signed(est)}), so "
                "the seed does not vary training and the runs are not replicates.")
    if row["pairs"] < stats.MIN_VERDICT_N:
        return (f"Undecided after {n} seeds: only {row['pairs']} paired seed(s) of trial {winner} and {o} finished "
                f"({stats.MIN_VERDICT_N} needed).")
    lo, hi = row["ci95"]
    return (f"Undecided after {n} seeds: trial {winner} − {o} = {_signed(est)} val mIoU "
            f"[95% CI {_signed(lo)}, {_signed(hi)}].")


def _signed(x: float, digits: int = 3) -> str:
    """+0.031; a nonzero value that would round to 0 gets the digits that show its sign."""
    while x != 0 and round(x, digits) == 0 and digits < 6:
        digits += 1
    return f"{x:+.{digits}f}"


def _params(params: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


# --------------------------------------------------------------------------- runs in the storage
class ConfirmRuns:
    """The study `<tune study>-confirm`: one trial per (candidate, seed) run, its record in the
    user attrs, claimed under the tune's lock; and the confirmations, one study attr each."""

    def __init__(self, spec: TuneSpec, storage: BaseStorage):
        self.spec, self.storage = spec, storage
        self.name = spec.study_name + SUFFIX
        self.study = optuna.create_study(storage=storage, study_name=self.name, direction="maximize",
                                         load_if_exists=True)
        kind = self.study.user_attrs.get(TUNE_ATTR)
        if kind is None:
            self.study.set_user_attr(TUNE_ATTR, {"kind": KIND, "of": spec.study_name})
        elif not isinstance(kind, dict) or kind.get("kind") != KIND:
            raise AblateError(f"study {self.name!r} in {store.mask_url(spec.storage)} is not the confirmation of "
                              f"{spec.study_name!r}; pass a new --study-name")
        self.reclaimer = workers.Reclaimer()

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def values(self, numbers: list[int], seeds: list[int]) -> dict[int, dict[int, float]]:
        """trial number -> {seed: val mIoU} of the complete runs among `numbers` × `seeds`."""
        out: dict[int, dict[int, float]] = {n: {} for n in numbers}
        for t in self.trials():
            a = t.user_attrs
            if t.state == TrialState.COMPLETE and a.get("confirm_of") in out and a.get("seed") in seeds:
                out[a["confirm_of"]][a["seed"]] = float(t.value)
        return out

    def claim(self, needed: list[tuple[int, int]]) -> tuple[optuna.Trial, int, int] | None:
        """A new RUNNING trial for the first run of `needed` ((trial number, seed)) that no one
        holds, has finished, or failed for good (an interrupted or lost run is run again)."""
        with study_lock(self.spec, self.storage):
            self.reclaimer.reclaim(self.storage, self.trials())
            held = {(t.user_attrs.get("confirm_of"), t.user_attrs.get("seed")) for t in self.trials()
                    if t.state in (TrialState.RUNNING, TrialState.COMPLETE)
                    or (t.state == TrialState.FAIL and workers.is_charged(t.user_attrs.get("failure_reason")))}
            free = [run for run in needed if run not in held]
            if not free:
                return None
            number, seed = free[0]
            trial = self.study.ask()
            trial.set_user_attr("confirm_of", number)
            trial.set_user_attr("seed", seed)
            workers.take_ownership(self.storage, storage_trial_id(self.storage, self.study, trial.number))
            return trial, number, seed

    def running(self, needed: list[tuple[int, int]]) -> bool:
        return any(t.state == TrialState.RUNNING and (t.user_attrs.get("confirm_of"), t.user_attrs.get("seed")) in needed
                   for t in self.trials())

    def confirmation(self, key: str) -> dict | None:
        return self.study.user_attrs.get(key)

    def save(self, key: str, conf: dict) -> None:
        self.study.set_user_attr(key, conf)


def run_one(runs: ConfirmRuns, trial: optuna.Trial, candidate: Candidate, seed: int, dataset,
            files: store.Artifacts) -> FrozenTrial:
    """Train `candidate`'s configuration with `seed` (no pruning), its record into the trial and
    its run.json into the artifact store; COMPLETE with its val mIoU, or FAIL with the reason.
    Ctrl-C fails it as interrupted (a rerun runs it again) and propagates."""
    from ablate.engine import fit_safely  # torch: kept out of `ablate tune --help`

    spec = runs.spec
    config = config_for(spec.base, candidate.params).replace(seed=seed)
    out_dir = spec.folder / "confirm" / f"{candidate.number}-seed{seed}"
    trial_id = storage_trial_id(runs.storage, runs.study, trial.number)
    value = None
    try:
        with workers.Heartbeat(runs.storage, trial_id):
            record = fit_safely(config, dataset, out_dir=out_dir, quiet=True, progress=False,
                                cache_dir=spec.cache_dir, checkpoint=False)
            store_record(trial, record, records.summary(record))
            value = records.completed_miou(record)
            store.attach_run(runs.storage, trial_id, record, out_dir, files, completed=value is not None,
                             with_checkpoint=False)
    except AblateError as exc:  # expected bad input of this run (e.g. a batch larger than the split)
        workers.fail_trial(runs.storage, trial_id, str(exc))
    except UpdateFinishedTrialError:
        pass  # reclaimed meanwhile (its worker looked lost): the reclaimer's FAIL stands
    except KeyboardInterrupt:
        workers.fail_trial(runs.storage, trial_id, workers.INTERRUPTED)
        raise
    state = TrialState.COMPLETE if value is not None else TrialState.FAIL
    return runs.study.tell(trial, value, state=state, skip_if_finished=True)


# --------------------------------------------------------------------------- the confirmation
def confirm_winner(spec: TuneSpec, study: optuna.Study, dataset, *, echo: Callable[[str], None] = print) -> dict:
    """Confirm the search's winner (see the module's docstring): run the looks not yet taken,
    record each, and put the confirmation into the tune study's attr `CONFIRM_ATTR` (what
    study.json and the report show). Returns it; its "sentences" say the decision."""
    storage = store.open_storage(spec.storage)
    cands = candidates(study, spec.confirm)
    runs = ConfirmRuns(spec, storage)
    key = "confirmation:" + stable_hash([c.number for c in cands])
    conf = runs.confirmation(key) or _new(spec, cands)
    if conf["delta"] != spec.min_effect:
        raise AblateError(f"--min-effect {spec.min_effect:g}: the confirmation of trials "
                          f"{', '.join(str(c.number) for c in cands)} runs with --min-effect {conf['delta']:g}; "
                          "rerun with it")
    echo(f"confirming trials {', '.join(str(c.number) for c in cands)} over up to {MAX_SEEDS} fresh seeds "
         f"(study {runs.name!r})")
    files = store.artifacts(spec.artifacts or store.default_artifacts(spec.results_dir, spec.study_name))
    while not conf["done"]:
        n = next(n for n in LOOKS if n > max((lk["n"] for lk in conf["looks"]), default=0))
        _run_stage(runs, cands, conf["seeds"][:n], dataset, files, echo)
        conf = _record_look(runs, key, cands, n)
        echo(_look_line(conf["looks"][-1]))
    study.set_user_attr(CONFIRM_ATTR, conf)
    return conf


def _new(spec: TuneSpec, cands: list[Candidate]) -> dict:
    return {"candidates": [{"number": c.number, "params": c.params, "value": c.value} for c in cands],
            "delta": spec.min_effect, "seeds": seeds_for(spec.base.seed), "looks": [], "done": False,
            "means": [], "sentences": []}


def _run_stage(runs: ConfirmRuns, cands: list[Candidate], seeds: list[int], dataset, files: store.Artifacts,
               echo: Callable[[str], None]) -> None:
    """Run every candidate with every seed of `seeds` (what this process can claim), then wait
    for the runs other processes hold."""
    by_number = {c.number: c for c in cands}
    needed = [(c.number, s) for s in seeds for c in cands]
    while True:
        claimed = runs.claim(needed)
        if claimed is None:
            if not runs.running(needed):
                return
            time.sleep(POLL_SECONDS)
            continue
        trial, number, seed = claimed
        done = run_one(runs, trial, by_number[number], seed, dataset, files)
        what = f"val mIoU {done.value:.4f}" if done.state == TrialState.COMPLETE else \
            f"failed ({done.user_attrs.get('failure_reason')})"
        echo(f"confirm trial {number} seed {seed}: {what}")


def _record_look(runs: ConfirmRuns, key: str, cands: list[Candidate], n: int) -> dict:
    """Take the look at `n` seeds unless another process took it first, under the tune's lock,
    and record it: a look is decided once."""
    with study_lock(runs.spec, runs.storage):
        conf = runs.confirmation(key) or _new(runs.spec, cands)
        if any(lk["n"] == n for lk in conf["looks"]):
            return conf
        order = [c.number for c in cands]
        seeds = conf["seeds"][:n]
        values = runs.values(order, seeds)
        look = take_look(values, order, n, [lk["n"] for lk in conf["looks"]], conf["delta"])
        conf = {**conf, "looks": [*conf["looks"], look]}
        conf["done"] = is_done(conf["looks"])
        conf["means"] = _means(runs, order, seeds, values)
        conf["sentences"] = sentences(conf)
        runs.save(key, conf)
        return conf


def _means(runs: ConfirmRuns, order: list[int], seeds: list[int], values: dict[int, dict[int, float]]) -> list[dict]:
    """Per candidate over the look's seeds: mean val mIoU with its 95% interval, mean test mIoU."""
    tests: dict[int, list[float]] = {n: [] for n in order}
    for t in runs.trials():
        a = t.user_attrs
        if t.state == TrialState.COMPLETE and a.get("confirm_of") in tests and a.get("seed") in seeds \
                and a.get("test_miou") is not None:
            tests[a["confirm_of"]].append(float(a["test_miou"]))
    out = []
    for number in order:
        v = list(values[number].values())
        out.append({"number": number, "n": len(v), "mean": decisions.finite(float(np.mean(v))) if v else None,
                    "ci95": _interval(v, 0.95), "test_mean": decisions.finite(float(np.mean(tests[number])))
                    if tests[number] else None})
    return out


def _look_line(look: dict) -> str:
    parts = [f"vs trial {row['other']}: {row['words']}" for row in look["comparisons"]]
    return (f"look at {look['n']} seeds (decided by p ≤ {look['threshold']:.4g}, equivalence p ≤ "
            f"{look['threshold_equiv']:.4g}): " + "; ".join(parts))
