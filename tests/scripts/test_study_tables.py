"""scripts/study_tables.py on the committed small study: its numbers are the study's own."""

import json
from pathlib import Path

from moe_core.criteria import format_verdict, judge_seeds
from moe_core.statistics import paired_t_test
from scripts import study_tables

STUDY = Path(__file__).parents[2] / "docs/results/small-3seed/experiment_results.json"


def _row(table: str, name: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r}")


def _tokens_per_sec_after_epoch_1(run: dict) -> float:
    m = run["metrics"]
    steps, speeds = m["steps"][1:], m["tokens_per_sec"][1:]
    return sum(steps) / sum(n / tps for n, tps in zip(steps, speeds, strict=True))


def _ratio_after_warm_up(study: dict, name: str) -> float:
    pairs = zip(study["runs"][name], study["runs"]["dense"], strict=True)
    ratios = [_tokens_per_sec_after_epoch_1(r) / _tokens_per_sec_after_epoch_1(d) for r, d in pairs]
    return sum(ratios) / len(ratios)


def test_the_summary_rows_are_the_verdicts_numbers():
    study = json.loads(STUDY.read_text())
    table = study_tables.summary(study)
    for name in ("baseline", "top2"):
        verdict = study["verdicts"][name]
        delta = verdict["primary"]["val_loss_delta"]
        row = _row(table, name)
        assert row[2] == f"{verdict['primary']['val_loss']:.4f}"
        # 4.2 and 3.0 standard errors: what the study called significant (beyond 2 SE) is
        # not at 95% with 2 degrees of freedom (t 4.303), so neither starred nor "sig"
        assert verdict["significant"] is True
        assert row[3] == f"{delta['mean']:+.4f} ± {delta['se']:.4f}"
        # the speed ratio is today's (the JSON's verdicts kept the median of every epoch):
        # each seed's tokens over seconds of epochs 2-4, against its dense run's, averaged
        assert row[7].endswith(f"({_ratio_after_warm_up(study, name):.2f})")
        assert row[-1] == "✓"
    # top2 against the baseline, paired by seed
    pairs = [
        t["metrics"]["best_val_ce_loss"] - b["metrics"]["best_val_ce_loss"]
        for t, b in zip(study["runs"]["top2"], study["runs"]["baseline"], strict=True)
    ]
    assert _row(table, "top2")[4].startswith(f"{sum(pairs) / 3:+.4f} ± ")
    assert _row(table, "baseline")[4] == "" and _row(table, "dense")[3] == ""


def test_the_verdicts_are_recomputed_with_todays_criteria():
    study = json.loads(STUDY.read_text())
    judged = study_tables.verdicts(study)
    for name in ("baseline", "top2"):
        fresh = judge_seeds(study["runs"][name], study["runs"]["dense"])
        assert judged[name]["significant"] is fresh["significant"] is False
        assert judged[name]["primary"]["val_loss_delta"] == fresh["primary"]["val_loss_delta"]
    # the JSON's own verdicts, stored before the t-test, still print, and say by what rule
    assert "significant by the rule of its time, |Δ| beyond 2 standard errors" in format_verdict(
        "baseline", study["verdicts"]["baseline"]
    )
    block = study_tables.verdict_block(study)
    assert block.count("NOT significant at 95% over 3 seeds") == 2
    assert "[-0.0910, +0.0010]" in block
    assert [
        line.split()[-1] for line in block.splitlines() if line.startswith(("baseline ", "top2 "))
    ] == ["✗", "✗"]


def test_each_star_is_a_paired_t_test_with_its_interval_and_p_value():
    study = json.loads(STUDY.read_text())
    table = study_tables.t_tests(study)
    runs = study["runs"]
    for name in ("baseline", "top2"):
        test = paired_t_test([
            r["metrics"]["best_val_ce_loss"] - d["metrics"]["best_val_ce_loss"]
            for r, d in zip(runs[name], runs["dense"], strict=True)
        ])  # fmt: skip
        row = next(_row(line, name) for line in table.splitlines()
                   if line.startswith(f"| {name} | val CE | dense |"))  # fmt: skip
        assert row[4] == f"[{test['ci_low']:+.4f}, {test['ci_high']:+.4f}]"
        assert row[5] == f"{test['t']:+.2f} (2)" and row[6] == f"{test['p_value']:.4f}"
        assert row[7] == "not significant"
    # baseline: t = -4.21 (p 0.052), just short of 4.303; the gap's +5.93 is beyond it
    assert (
        "| baseline | val CE | dense | -0.0450 ± 0.0107 | [-0.0910, +0.0010] | -4.21 (2) |" in table
    )
    assert "| baseline | gap | dense | +0.0320 ± 0.0054 |" in table
    assert "4.303 for 2 df" in table


def test_main_prints_the_report_sections(capsys):
    study_tables.main([str(STUDY)])
    out = capsys.readouterr().out
    headings = [line for line in out.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Means over seeds",
        "## Paired t-tests at 95%",
        "## Verdicts (recomputed with today's moe_core.criteria)",
        "## Per seed",
    ]


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


def _inverted(run: dict, worse_by: float, dense: dict) -> None:
    """`run` made worse than `dense` by `worse_by` at its best epoch, its gap below 0."""
    m = run["metrics"]
    best = m["val_epochs"].index(m["best_epoch"])
    ce = dense["metrics"]["best_val_ce_loss"] + worse_by
    m["best_val_ce_loss"] = m["val_ce_losses"][best] = ce
    m["train_eval_ce_losses"][best] = ce + 0.05  # validation CE below training CE


def test_a_pass_on_an_inverted_gap_says_so_in_the_tables_and_the_verdicts():
    study = json.loads(STUDY.read_text())
    for run, dense in zip(study["runs"]["top2"], study["runs"]["dense"], strict=True):
        _inverted(run, 0.3, dense)
    judged = study_tables.verdicts(study)["top2"]
    assert judged["passed"] and judged["primary"]["gap_outcome"] == "inverted"
    assert judged["primary"]["loss_worse"] == "beyond_noise"
    assert _row(study_tables.summary(study), "top2")[-1] == "✓ sig (gap rule only)"
    block = study_tables.verdict_block(study)
    assert "inverted, val CE below train CE (✓ reduced ≥ 25% by the spec's rule)" in block
    assert "✓ by the gap rule only: val CE +0.3000 ± 0.0000 worse than dense, beyond seed" in block
    assert "sig ✓ (gap)" in block
