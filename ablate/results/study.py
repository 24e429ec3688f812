"""Results stage, one study as read: its table, its run records and where each run's files
are (a local run folder, or an artifact store), and the reads of those files a report or
`ablate predict` needs: a checkpoint, the predictions a run stored, the gallery's val images."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate import _io, store
from ablate.errors import AblateError
from ablate.gallery import GALLERY_IMAGES, gallery_indices, read_predictions_png
from ablate.record import CHECKPOINT_FILE, RECORD_FILE

if TYPE_CHECKING:
    import pandas as pd


class NoCheckpoint(AblateError):
    """A run whose checkpoint was, by the study's choice, not kept."""


@dataclass
class ValImages:
    """The gallery's val images of a study's dataset (`gallery.gallery_indices`)."""
    class_names: list[str]
    ids: list[str]
    images: list[np.ndarray]  # H×W×3 uint8
    truths: list[np.ndarray]  # H×W uint8, 255 = void


@dataclass
class Study:
    """Everything a study holds, read once (`open_study`): from its Optuna storage (records
    from the trials' user attrs, files from the artifact store), or from a local study folder."""
    name: str
    folder: Path  # where exports and downloads go: <results-dir>/<study>/
    kind: str  # "grid" | "tune"
    meta: dict  # study.json, or the same rebuilt from the storage's study attrs
    table: pd.DataFrame  # runs.csv (grid) or trials.csv (tune): rebuilt from the storage, or as written
    records: dict[str, dict] = field(default_factory=dict)  # run key (cell id, trial number) -> run record
    run_dirs: dict[str, Path] = field(default_factory=dict)  # the same keys -> a local folder holding the record
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> {filename: artifact id} (storage)
    stores: dict[str, str] = field(default_factory=dict)  # key -> the artifact store spec its files are in
    labels: dict[str, str] = field(default_factory=dict)  # key -> "trial N (label)", for messages
    pruned: set[str] = field(default_factory=set)  # checkpoint artifact ids removed by --keep-checkpoints best
    source: str = "folder"  # "storage" | "folder"
    storage_url: str | None = None  # the storage it was read from (unmasked; never written anywhere)
    _opened: dict = field(default_factory=dict, repr=False)  # artifact store spec -> the opened store

    @property
    def dataset(self) -> dict:
        if self.meta.get("dataset"):
            return self.meta["dataset"]
        return next((r["dataset"] for r in self.records.values() if r.get("dataset")), {})

    @property
    def class_names(self) -> list[str]:
        return [str(n) for n in self.dataset.get("class_names", [])]

    def fetch(self, key: str, filename: str) -> Path:
        """Download run `key`'s stored file `filename` (an artifact it has) under
        <folder>/checkpoints/<artifact id>/; a missing one is an error naming the trial."""
        aid = self.files[key][filename]
        spec = self.stores.get(key)
        if not spec:
            raise AblateError(f"{self.labels.get(key, key)}: the trial records no artifact store; pass --artifacts")
        if spec not in self._opened:
            self._opened[spec] = store.open_artifacts(spec, create=False)
        return store.fetch(self._opened[spec], aid, self.folder / "checkpoints" / aid / filename,
                           what=f"{self.labels.get(key, key)}: {filename}")

    def checkpoint_dir(self, key: str) -> Path:
        """A folder holding `key`'s best.pt and run.json (what `ablate predict --run` takes): its
        run folder, or for a stored study a download of its checkpoint artifact under
        <folder>/checkpoints/<artifact id>/. A checkpoint that should be there and is not (or
        an unreadable store) is an AblateError naming the trial; one never kept is `NoCheckpoint`."""
        local = self.run_dirs.get(key, self.folder / "runs" / key)
        if key not in self.files:
            return local
        aid = self.files[key].get(CHECKPOINT_FILE)
        if aid is None and (local / CHECKPOINT_FILE).is_file():  # a cell run before checkpoints were artifacts
            return local
        self._check_kept(key, aid)
        path = self.fetch(key, CHECKPOINT_FILE)
        if not (path.parent / RECORD_FILE).is_file():
            _io.write_json(path.parent / RECORD_FILE, self.records[key])
        return path.parent

    def _check_kept(self, key: str, aid: str | None) -> None:
        """`NoCheckpoint` when the study chose not to keep this run's checkpoint."""
        what = self.labels.get(key, key)
        if aid is None:
            if self.kind == "grid":
                raise NoCheckpoint(f"{what}: no checkpoint stored (the grid ran with --keep-checkpoints none)")
            raise NoCheckpoint(f"{what}: no checkpoint stored (the tune ran with --keep-checkpoints none, or best and "
                               "it was never the best trial)")
        if aid in self.pruned:
            why = ("it was not an architecture's best run when the grid finished" if self.kind == "grid"
                   else "a later trial was better")
            raise NoCheckpoint(f"{what}: checkpoint pruned by --keep-checkpoints best ({why})")

    def predictions(self, key: str) -> tuple[list[str], list[np.ndarray]] | None:
        """The image ids and masks run `key`'s worker predicted for the gallery (its
        predictions.png: an artifact, or a file in its run folder); None when it stored none."""
        if self.files.get(key, {}).get(store.PREDICTIONS_FILE) and self.stores.get(key):
            path = self.fetch(key, store.PREDICTIONS_FILE)
        elif key in self.run_dirs and (self.run_dirs[key] / store.PREDICTIONS_FILE).is_file():
            path = self.run_dirs[key] / store.PREDICTIONS_FILE
        else:
            return None
        return read_predictions_png(path, f"{self.labels.get(key, key)}: {store.PREDICTIONS_FILE}")


def gallery_images(config: dict, class_names: list[str], *, cache_dir: str | Path, n_images: int = GALLERY_IMAGES
                   ) -> ValImages:
    """The gallery's val images (evenly spaced over the split) of the dataset a run's
    `config` trained on, decoded through `cache_dir`; an AblateError when it cannot be loaded."""
    from ablate.data import load_dataset

    ds = load_dataset(config["data"], image_size=tuple(config["image_size"]), num_classes=config["num_classes"],
                      ignore_index=config["ignore_index"], val_fraction=config["val_fraction"], cache_dir=cache_dir)
    val = ds.splits["val"]
    idx = gallery_indices(len(val), n_images)
    return ValImages(class_names or ds.class_names, [val.ids[i] for i in idx],
                     [im.permute(1, 2, 0).numpy() for im in val.images[idx]], [m.numpy() for m in val.masks[idx]])
