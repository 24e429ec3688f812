"""Sequential seeds, the plan and what it opens: `SeedPlan` (looks from a minimum of seeds up
to a maximum), which seeds an architecture runs now given its stage record, and the plan a
study was created with. Plain data, no analysis: a grid worker claims cells with it without
importing pandas; the looks themselves are taken by `ablate.grid.stages` and read by
`ablate.analysis.sequential`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ablate.errors import AblateError
from ablate.stats import MIN_VERDICT_N

STAGES_ATTR = "stages"  # study user attr: {model: stage record}
GROWTH = 1.5  # each stage brings the seeds to about 1.5 times the last look's
SHAPES = ("pocock", "obf")


@dataclass(frozen=True)
class SeedPlan:
    """Sequential seeds: looks from `min` seeds, growing by GROWTH, up to `max`."""
    min: int = 3
    max: int = 10
    shape: str = "pocock"

    def __post_init__(self):
        if not (MIN_VERDICT_N <= self.min <= self.max):
            raise AblateError(f"seeds: expected min >= {MIN_VERDICT_N} and min <= max, got min {self.min}, "
                              f"max {self.max}")
        if self.shape not in SHAPES:
            raise AblateError(f"seeds: spending {self.shape!r} is not one of {', '.join(SHAPES)}")

    def schedule(self) -> list[int]:
        """The seed counts at which looks are taken: [3, 5, 8, 10] for 3..10."""
        out = [self.min]
        while out[-1] < self.max:
            out.append(min(self.max, max(out[-1] + 1, math.ceil(out[-1] * GROWTH))))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max, "shape": self.shape}

    def text(self) -> str:
        return f"sequential seeds: {self.min} to {self.max}, looks at {', '.join(map(str, self.schedule()))}"


def plan_of(attrs: dict[str, Any]) -> SeedPlan | None:
    """The plan of sequential seeds a study was created with (None: fixed seeds)."""
    plan = ((attrs.get("decisions") or {}).get("sequential"))
    return None if not plan else SeedPlan(int(plan["min"]), int(plan["max"]), str(plan.get("shape", "pocock")))


def open_seeds(seeds: list[int], record: dict | None, plan: SeedPlan) -> list[int]:
    """The seeds an architecture's cells run: the first `target` of the study's seeds; once it
    stopped, the most it ever opened (`opened`; a look's count can be lower when a cell failed
    for good, and that cell's seed still ran)."""
    record = record or {}
    looks = record.get("looks") or []
    n = record.get("target", plan.min)
    if n is None:
        n = record.get("opened") or (looks[-1]["n"] if looks else plan.min)
    return sorted(seeds)[:n]


def open_cells(cells: list[dict], attrs: dict[str, Any], plan: SeedPlan | None) -> list[dict]:
    """The cells (briefs) that run now: all of them in a fixed design; in a sequential one,
    each architecture's cells of its open seeds."""
    if plan is None:
        return cells
    seeds = sorted({c["seed"] for c in cells})
    records = attrs.get(STAGES_ATTR) or {}
    allowed = {m: set(open_seeds(seeds, records.get(m), plan)) for m in {c["model"] for c in cells}}
    return [c for c in cells if c["seed"] in allowed[c["model"]]]
