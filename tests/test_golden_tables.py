"""The exported tables of a fixed study are exactly those of the commit the study was made
with (tests/golden/README.md): a change of the code's shape changes no number or word."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
TABLES = ("runs", "summary", "effects", "comparisons")


@pytest.fixture
def golden_storage(tmp_path) -> str:
    journal = tmp_path / "study.journal"
    with gzip.open(GOLDEN / "study.journal.gz", "rb") as src, open(journal, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return str(journal)


def _export(storage: str, results_dir: Path) -> Path:
    from ablate import analysis, results

    study = results.open_study(results_dir, "golden", storage=storage)
    results.write_tables(study.folder, analysis.export_tables(study, analysis.finished_runs(study)))
    return results_dir / "golden"


@pytest.mark.parametrize("table", TABLES)
def test_the_exported_tables_equal_the_golden_ones(table, golden_storage, tmp_path):
    folder = _export(golden_storage, tmp_path / "results")
    got = pd.read_csv(folder / f"{table}.csv")
    want = pd.read_csv(GOLDEN / f"{table}.csv")
    pd.testing.assert_frame_equal(got, want, check_exact=True)
