"""Designs: the fractional factorials' alias structure checked from their run matrices, a
planted effect recovered, and the full and one-at-a-time designs counted."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from ablate.design import GENERATORS, contrast_effects, fractional_factorial, full_factorial, one_at_a_time
from ablate.errors import AblateError

FIVE = ["scheduler", "augment", "weighted_loss", "optimizer", "image_size"]


def test_five_factors_run_sixteen_cells_at_resolution_five():
    d = fractional_factorial(FIVE)
    assert d.runs.shape == (16, 5)
    assert d.generators == ("E = ABCD",)
    assert d.defining_relation == ("ABCDE",)
    assert d.resolution == 5
    assert len({tuple(r) for r in d.runs}) == 16  # 16 distinct cells of the 32
    assert (d.runs.prod(axis=1) == 1).all()  # I = ABCDE: every run has an even number of "off"
    aliases = d.aliases()
    assert aliases["A"] == [] and aliases["E"] == []  # main effects: aliased only with 4-factor terms
    assert aliases["AB"] == ["CDE"] and aliases["DE"] == ["ABC"]
    text = "\n".join(d.describe())
    assert "resolution V, 16 runs" in text and "E = image_size" in text and "AB = CDE" in text


def _columns(runs: np.ndarray) -> dict[str, np.ndarray]:
    k = runs.shape[1]
    cols = {(i,): runs[:, i] for i in range(k)}
    cols.update({(i, j): runs[:, i] * runs[:, j] for i, j in itertools.combinations(range(k), 2)})
    return cols


@pytest.mark.parametrize("k", sorted(GENERATORS))
def test_every_tabled_design_has_resolution_four_or_more_from_its_runs(k):
    """Checked on the run matrix itself, not on the generator words: every main-effect
    column is balanced and orthogonal to every other main-effect and two-factor column."""
    d = fractional_factorial([f"f{i}" for i in range(k)])
    assert d.resolution >= 4
    n = len(d.runs)
    assert n == 2 ** (k - len(d.generators)) and n < 2**k
    cols = _columns(d.runs)
    for i in range(k):
        assert cols[(i,)].sum() == 0
        for key, col in cols.items():
            if key != (i,):
                assert abs(cols[(i,)] @ col) == 0, (k, i, key)
    if d.resolution >= 5:  # two-factor interactions clear of each other too
        pairs = [c for key, c in cols.items() if len(key) == 2]
        for a, b in itertools.combinations(pairs, 2):
            assert a @ b == 0


def test_resolution_four_aliases_two_factor_interactions_in_pairs():
    d = fractional_factorial([f"f{i}" for i in range(6)])  # E = ABC, F = BCD
    assert d.defining_relation == ("ABCE", "ADEF", "BCDF")
    assert d.resolution == 4
    assert d.aliases()["AB"] == ["CE"]
    cols = _columns(d.runs)
    assert np.array_equal(cols[(0, 1)], cols[(2, 4)])  # AB and CE are the same contrast


def test_planted_main_effect_is_recovered_and_nothing_else_appears():
    d = fractional_factorial(FIVE)
    on = d.runs > 0
    rng = np.random.default_rng(0)
    y = 0.40 + 0.05 * on[:, 1] - 0.02 * on[:, 3]  # augment +0.05, optimizer −0.02
    effects = contrast_effects(d.runs, y, FIVE)
    assert effects["augment"] == pytest.approx(0.05)
    assert effects["optimizer"] == pytest.approx(-0.02)
    for name, value in effects.items():
        if name not in ("augment", "optimizer"):
            assert value == pytest.approx(0.0, abs=1e-12), name
    noisy = contrast_effects(d.runs, y + rng.normal(0, 0.002, len(y)), FIVE)
    assert noisy["augment"] == pytest.approx(0.05, abs=0.004)


def test_an_interaction_shows_up_in_its_alias_only_at_resolution_four():
    d = fractional_factorial([f"f{i}" for i in range(6)])
    on = d.runs > 0
    y = 0.1 * (on[:, 0] & on[:, 1])  # a pure A·B synergy
    effects = contrast_effects(d.runs, y, [f"f{i}" for i in range(6)])
    assert effects["f0 × f1"] == pytest.approx(0.05)
    assert effects["f2 × f4"] == pytest.approx(0.05)  # CE: the alias the design warns about
    assert effects["f0"] == pytest.approx(0.05) and effects["f2"] == pytest.approx(0.0)


@pytest.mark.parametrize("names, match", [
    (["a", "b", "c"], "needs 4 to 11 two-level factors, got 3"),
    (["a", "b", "a", "c"], "repeat"),
])
def test_bad_fractional_requests_are_refused(names, match):
    with pytest.raises(AblateError, match=match):
        fractional_factorial(names)


def test_full_factorial_and_one_at_a_time():
    levels = {"loss": ["ce", "dice", "focal"], "optimizer": ["adamw", "sgd"]}
    full = full_factorial(levels)
    assert len(full) == 6 and full[0] == {"loss": "ce", "optimizer": "adamw"} and full[1]["optimizer"] == "sgd"
    oat = one_at_a_time(levels)
    assert oat == [{"loss": "ce", "optimizer": "adamw"}, {"loss": "dice", "optimizer": "adamw"},
                   {"loss": "focal", "optimizer": "adamw"}, {"loss": "ce", "optimizer": "sgd"}]
    with pytest.raises(AblateError, match="reference loss = 'bce'"):
        one_at_a_time(levels, {"loss": "bce", "optimizer": "adamw"})


def test_five_factor_main_effects_are_clear_of_every_two_factor_interaction():
    """Resolution V from the alias table: no main effect has an alias shorter than four
    factors, and each two-factor interaction is aliased with exactly one three-factor one."""
    aliases = fractional_factorial(FIVE).aliases()
    assert all(aliases[letter] == [] for letter in "ABCDE")
    pairs = {k: v for k, v in aliases.items() if len(k) == 2}
    assert len(pairs) == 10 and all(len(v) == 1 and len(v[0]) == 3 and not set(v[0]) & set(k) for k, v in pairs.items())


def test_the_analysis_contrasts_of_a_fractional_design_are_the_designs_own():
    """The analysis (per-seed effects through weights over the cells) and contrast_effects
    (the run matrix) give the same estimates on the same responses."""
    from ablate.analysis import design_contrasts

    levels = {name: [False, True] for name in FIVE}
    settings, contrasts = design_contrasts("fractional", levels)
    d = fractional_factorial(FIVE)
    assert settings == d.settings()
    y = np.random.default_rng(1).normal(0.4, 0.05, len(settings))
    direct = contrast_effects(d.runs, y, FIVE)
    assert len(contrasts) == len(direct) == 15
    for c in contrasts:
        name = " × ".join(c["factors"].split())
        assert float(c["weights"] @ y) == pytest.approx(direct[name]), name
