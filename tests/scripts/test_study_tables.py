"""scripts/study_tables.py on the committed small study: its numbers are the study's own."""

import json
from pathlib import Path

from scripts import study_tables

STUDY = Path(__file__).parents[2] / "docs/results/small-3seed/experiment_results.json"


def _row(table: str, name: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r}")


def test_the_summary_rows_are_the_verdicts_numbers():
    study = json.loads(STUDY.read_text())
    table = study_tables.summary(study)
    for name in ("baseline", "top2"):
        verdict = study["verdicts"][name]
        delta = verdict["primary"]["val_loss_delta"]
        row = _row(table, name)
        assert row[2] == f"{verdict['primary']['val_loss']:.4f}"
        # significant here (beyond 2 SE), so starred
        assert row[3] == f"{delta['mean']:+.4f} ± {delta['se']:.4f}*"
        assert row[7].endswith(f"({verdict['secondary']['throughput_ratio']:.2f})")
        assert row[-1] == "✓ sig"
    # top2 against the baseline, paired by seed
    pairs = [
        t["metrics"]["best_val_ce_loss"] - b["metrics"]["best_val_ce_loss"]
        for t, b in zip(study["runs"]["top2"], study["runs"]["baseline"], strict=True)
    ]
    assert _row(table, "top2")[4].startswith(f"{sum(pairs) / 3:+.4f} ± ")
    assert _row(table, "baseline")[4] == "" and _row(table, "dense")[3] == ""


def test_one_row_per_run_and_seed():
    study = json.loads(STUDY.read_text())
    rows = [line for line in study_tables.per_seed(study).splitlines()[2:] if line]
    assert len(rows) == 9  # 3 seeds x (dense, baseline, top2)
    assert _row("\n".join(rows[:1]), "1337")[1] == "dense"


def test_a_run_that_did_not_finish_is_said_and_left_out_of_its_pairs():
    study = json.loads(STUDY.read_text())
    study["runs"]["top2"][1] = None  # the study writes null for a run that did not succeed
    row = _row(study_tables.summary(study), "top2")
    first, third = (study["runs"]["top2"][i]["metrics"]["best_val_ce_loss"] for i in (0, 2))
    dense = [study["runs"]["dense"][i]["metrics"]["best_val_ce_loss"] for i in (0, 2)]
    assert row[3].startswith(f"{((first - dense[0]) + (third - dense[1])) / 2:+.4f} ± ")
    assert row[2] == f"{(first + third) / 2:.4f}"
    assert "| 1338 | top2 | did not finish |" in study_tables.per_seed(study)
    study["runs"]["top2"] = [None, None, None]
    assert "| top2 | no finished run |" in study_tables.summary(study)
