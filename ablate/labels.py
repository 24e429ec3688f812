"""Data stage, the class set: which mask labels a dataset's classes are, and the one-line error
naming the masks that hold any other label (a stray value is never trained on as a class)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple

import torch

from ablate.errors import AblateError

VOID = 255
VOC_CLASS_COUNT = 21  # PASCAL VOC: background and 20 object classes


# Mask labels must lie in 0..limit-1, and the limit comes from the first of: --num-classes;
# classes.txt (one name per class); the PASCAL VOC list when a VOC-layout dataset's training
# masks use label 20; else the run 0, 1, 2, ... the training masks use without a gap. Any mask
# (of any split) holding a non-void label at or above the limit is refused, naming the masks, the
# labels and the fixes: a gap is where a stray value shows (0..3 everywhere and a 200 in one
# mask is void or a typo, not 201 classes), while a dataset whose classes really are sparse
# says so with --num-classes. The class count is the limit, except under classes.txt, which
# only bounds the labels: there the largest label held sets it, as before the check existed (a
# trailing name such as CamVid's "void", mapped to 255 by --ignore-index, adds no class).
class ClassSet(NamedTuple):
    limit: int  # labels must be below this
    declared: str  # what sets the limit, as the error message says it
    more_classes: str  # how to declare classes up to n (a format string with {n})
    inferred: bool  # the limit is the masks' own gap-free run: the error names the gap
    count_from_masks: bool  # the class count is the largest label held + 1, not the limit


def class_set(layout: str, num_classes: int | None, names_file: Path | None, train_labels: frozenset[int],
               root: Path) -> ClassSet:
    """The labels the masks may hold, by the first rule above that applies."""
    if num_classes is not None:
        return ClassSet(num_classes, f"labels {_values(range(num_classes))} that --num-classes {num_classes} declares",
                         "pass --num-classes {n}", False, False)
    if names_file is not None:
        n, name = len(read_names(names_file)), shown(names_file, root)
        return ClassSet(n, f"labels {_values(range(n))}, the {n} class names of {name}",
                         f"add the missing names to {name} so it names {{n}} classes", False, True)
    if layout == "voc" and VOC_CLASS_COUNT - 1 in train_labels:
        return ClassSet(VOC_CLASS_COUNT, f"labels {_values(range(VOC_CLASS_COUNT))}, the PASCAL VOC classes",
                         "pass --num-classes {n}", False, False)
    k = min(set(range(256)) - train_labels)
    run = f"labels {_values(range(k))}, " if k else ""
    return ClassSet(k, f"{run}the classes the training masks use from 0 without a gap", "pass --num-classes {n}",
                     True, False)


def check_labels(data: str, masks: list[tuple[str, frozenset[int]]], classes: ClassSet) -> None:
    """One error for every mask holding a label outside the class set (masks: (name, labels held))."""
    bad = [(name, held) for name, held in masks if max(held, default=-1) >= classes.limit]
    if not bad:
        return
    strays = sorted({v for _, held in bad for v in held if v >= classes.limit})
    declared = classes.declared
    gap = [v for v in range(classes.limit, strays[-1]) if v not in strays]
    if classes.inferred and gap:
        declared += f" (none holds {_values(gap)})"
    # the first few masks and how many in all: enough to find the file, and to tell one stray
    # mask (void or a typo) from a class many masks use (then --num-classes is the fix)
    names = ", ".join(name for name, _ in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    counted = f"1 of {len(masks)} masks holds" if len(bad) == 1 else f"{len(bad)} of {len(masks)} masks hold"
    fix_masks = "fix the mask" if len(bad) == 1 else "fix the masks"
    more = classes.more_classes.format(n=strays[-1] + 1)
    if len(strays) == 1:
        v = strays[0]
        what = f"label {v}"
        fixes = f"if {v} is void pass --ignore-index {v}, if it is a class {more}, else {fix_masks}"
    else:  # --ignore-index takes one value
        what = f"labels {_values(strays)}"
        fixes = f"if one of them is void pass it as --ignore-index, if they are classes {more}, else {fix_masks}"
    raise AblateError(f"{data}: {counted} {what} outside {declared}: {names}; {fixes}")


def _values(values: Iterable[int]) -> str:
    """Sorted ints as runs: 0..3, 7, 9..12 (at most six runs shown)."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    if not runs:
        return "(none)"
    shown = [str(a) if a == b else f"{a}..{b}" for a, b in runs[:6]]
    return ", ".join(shown) + (" and more" if len(runs) > 6 else "")


def held_labels(mask: torch.Tensor) -> frozenset[int]:
    """The non-void labels a uint8 mask tensor holds."""
    return frozenset(torch.bincount(mask.flatten(), minlength=256).nonzero().flatten().tolist()) - {VOID}


def shown(path: Path, root: Path) -> str:
    """A mask's name in a message: relative to --data, which the message names first."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def read_names(names_file: Path) -> list[str]:
    return [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
