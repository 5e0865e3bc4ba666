"""The read commands (ls, show, metrics, compare, verdict, watch, logs, download) and the
writes that end runs (cancel, delete), on runs whose rows the tests write through
store/runs as a worker would: the real app and Postgres, no worker."""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from store import artifacts, leases
from store.db import session_scope
from store.models import Status
from tests.factories import claim, record, result, succeed, write

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)

MICRO = {"base_preset": "micro", "base": {"max_train_tokens": 4096, "num_epochs": 2}}


def epoch_record(epoch: int, loss: float, *, dense: bool = False, tokens: float = 1000.0,
                 eval_min: tuple[float, float] = (1.0, 3.5),
                 dropped: tuple[float, float] = (0.3, 0.1),
                 imbalance: tuple[float, float] = (0.9, 0.4)) -> dict:  # fmt: skip
    """An epoch as the Trainer reports it; layers 2 and 4 differ, so a column that reads
    the wrong layer (or the wrong reduction over layers) shows it."""
    rec = record(epoch, loss, layers=() if dense else (2, 4))
    rec["tokens_per_sec"] = tokens
    for i, layer in enumerate(rec["eval_expert_stats"]):
        layer["min_usage"] = eval_min[i]
    for i, layer in enumerate(rec["expert_stats"]):
        layer["dropped"] = dropped[i]
        layer["imbalance"] = imbalance[i]
    return rec


def finish(settings, experiment_id: int, epochs: list[dict], run_result: dict | None,
           status: Status = Status.succeeded, error: str | None = None) -> None:  # fmt: skip
    """Run `experiment_id` as a worker would: claim it, write its epochs, end it."""
    owner = f"test-worker-{experiment_id}"
    assert claim(settings.database_url, experiment_id, owner).outcome is leases.ClaimOutcome.claimed
    for rec in epochs:
        write(settings.database_url, experiment_id, owner, rec)
    with session_scope(settings.database_url) as session:
        assert leases.finish_experiment(session=session, experiment_id=experiment_id, owner=owner,
                                      status=status, error=error, result=run_result)  # fmt: skip


@pytest.fixture(scope="module")
def seeded(http, settings):
    """A dense run, a MoE run judged against it, a MoE run without a baseline whose router
    collapsed, a failed run and a queued one."""

    def create(**body) -> int:
        response = http.post("/experiments", json={**MICRO, **body})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    dense = create(name="r-dense", dense=True, tags=["reads", "dense"])
    moe = create(name="r-moe", preset="baseline", baseline_id=dense, tags=["reads"])
    loner = create(name="r-loner", preset="top2", tags=["other"])
    failed = create(name="r-failed", preset="top2")
    queued = create(name="r-queued", preset="top2", tags=["reads"])
    finish(settings, dense, [epoch_record(1, 5.6, dense=True), epoch_record(2, 5.25, dense=True)],
           result(5.24, dense=True))  # fmt: skip
    finish(settings, moe, [epoch_record(1, 6.0, tokens=1000), epoch_record(2, 5.01, tokens=3000)],
           result(5.0))  # fmt: skip
    finish(settings, loner, [epoch_record(1, 5.51)], result(5.5, eval_usage=(2.0,) + (14.0,) * 7))
    finish(settings, failed, [], None, Status.failed, error="RuntimeError: out of memory")
    return SimpleNamespace(dense=dense, moe=moe, loner=loner, failed=failed, queued=queued)


def ok(result) -> str:
    assert result.exit_code == 0, result.output + result.stderr
    return result.stdout


def test_ls_filters_orders_and_prints_a_table(cli, seeded):
    page = json.loads(ok(cli("ls", "--tag", "reads", "--json")))
    assert [run["id"] for run in page["items"]] == [seeded.queued, seeded.moe, seeded.dense]
    assert page["total"] == 3
    dense_only = json.loads(ok(cli("ls", "--dense", "--json")))["items"]
    assert [run["id"] for run in dense_only] == [seeded.dense]
    moe_only = json.loads(ok(cli("ls", "--moe", "--status", "succeeded", "--json")))["items"]
    assert {run["id"] for run in moe_only} == {seeded.moe, seeded.loner}
    by_ce = json.loads(ok(cli("ls", "--order", "val_ce", "--status", "succeeded", "--json")))
    assert [run["id"] for run in by_ce["items"]] == [seeded.moe, seeded.dense, seeded.loner]
    named = json.loads(ok(cli("ls", "--name", "LONER", "--json")))["items"]
    assert [run["id"] for run in named] == [seeded.loner]

    table = ok(cli("ls", "--tag", "reads"))
    header, *rows = [line for line in table.splitlines() if line.strip() and "──" not in line]
    assert header.split() == ["id", "name", "owner", "preset", "status", "epoch", "best", "val",
                              "CE", "tags", "created"]  # fmt: skip
    # an open deployment: every run is the bootstrap admin's
    assert rows[1].split()[:7] == [str(seeded.moe), "r-moe", "admin", "baseline", "succeeded",
                                   "2/2", "5.0000"]  # fmt: skip
    assert rows[2].split()[:7] == [str(seeded.dense), "r-dense", "admin", "dense", "succeeded",
                                   "2/2", "5.2400"]  # fmt: skip
    assert "reads,dense" in rows[2]
    assert rows[0].split()[:6] == [str(seeded.queued), "r-queued", "admin", "top2", "queued",
                                   "0/2"]  # fmt: skip

    limited = ok(cli("ls", "--limit", "2"))
    assert "2 of " in limited.splitlines()[-1]

    bad = cli("ls", "--status", "sleeping")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: 422 status: ")


def test_show_prints_the_key_fields(cli, seeded):
    text = ok(cli("show", seeded.moe))
    assert f"experiment {seeded.moe}" in text
    lines = {line.split("  ")[0].strip(): line.strip() for line in text.splitlines()}
    assert lines["best val CE"].endswith("5.0000")
    assert lines["baseline"].endswith(str(seeded.dense))
    assert lines["kind"].endswith("baseline on micro")
    assert lines["epoch"].endswith("2/2")
    assert "progress" not in lines
    failed = ok(cli("show", seeded.failed))
    assert "RuntimeError: out of memory" in failed
    assert json.loads(ok(cli("show", seeded.moe, "--json")))["best_val_ce_loss"] == 5.0
    missing = cli("show", 999999)
    assert (missing.exit_code, missing.stderr) == (1, "error: 404 experiment 999999 not found\n")


def test_show_prints_the_hyperparameters(cli, seeded, http):
    run = http.get(f"/experiments/{seeded.moe}").json()
    text = ok(cli("show", seeded.moe))
    assert "hyper-parameters" in text
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.split()}
    # every field of both resolved configs, each with its value
    for section in ("config", "base"):
        for key, value in run[section].items():
            shown = " ".join(lines[f"{section}.{key}"])
            assert shown == (json.dumps(value) if isinstance(value, list) else str(value))
    assert lines["config.top_k"] == ["1"] and lines["base.moe_layers"] == ["[2,", "4]"]


def test_show_says_where_a_running_run_is(cli, http, settings):
    run_id = http.post("/experiments", json={**MICRO, "name": "r-running"}).json()["id"]
    owner = "test-worker-running"
    assert claim(settings.database_url, run_id, owner).outcome is leases.ClaimOutcome.claimed
    progress = {"phase": "training", "epoch": 2, "step": 30, "steps_per_epoch": 76,
                "tokens_per_sec": 5100.0, "eta_seconds": 72.0,
                "updated_at": datetime.now(UTC).isoformat()}  # fmt: skip
    with session_scope(settings.database_url) as session:
        assert leases.heartbeat(
            session=session, experiment_id=run_id, owner=owner, progress=progress
        )
    text = ok(cli("show", run_id))
    assert "epoch 2/2 training: step 30/76, 5,100 tok/s, ETA 1m 12s" in text
    with session_scope(settings.database_url) as session:
        leases.finish_experiment(session=session, experiment_id=run_id, owner=owner,
                               status=Status.cancelled)  # fmt: skip


def test_metrics_csv_and_table_use_the_last_layer(cli, seeded):
    rows = list(csv.DictReader(io.StringIO(ok(cli("metrics", seeded.moe, "--csv")))))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    second = rows[1]
    assert float(second["train_loss"]) == pytest.approx(5.01)
    assert float(second["val_ce"]) == pytest.approx(5.0)
    assert float(second["val_loss"]) == pytest.approx(5.01)
    assert float(second["tokens_per_sec"]) == 3000
    assert float(second["min_usage_pct"]) == 3.5  # layer 4's evaluation, not layer 2's 1.0
    assert float(second["drop_pct"]) == pytest.approx(10.0)  # layer 4's training drops
    assert float(second["imbalance"]) == 0.4  # layer 4's training load
    dense_rows = list(csv.DictReader(io.StringIO(ok(cli("metrics", seeded.dense, "--csv")))))
    assert dense_rows[0]["min_usage_pct"] == "" and dense_rows[0]["drop_pct"] == ""
    assert dense_rows[0]["imbalance"] == ""

    table = ok(cli("metrics", seeded.moe))
    assert "min usage %" in table
    epoch_two = next(line for line in table.splitlines() if line.split()[:1] == ["2"])
    assert epoch_two.split() == ["2", "5.0100", "5.0000", "5.0000", "5.0100", "3,000", "3.5",
                                 "10.0", "0.40"]  # fmt: skip
    assert json.loads(ok(cli("metrics", seeded.moe, "--json")))["epochs"][1]["epoch"] == 2


@pytest.mark.parametrize("command", ["metrics", "compare"])
def test_two_output_formats_are_refused_in_one_line(cli, seeded, command):
    refused = cli(command, seeded.moe, "--csv", "--json")
    assert refused.exit_code == 2
    assert refused.stderr == "error: --csv and --json conflict: choose one output\n"
    assert refused.stdout == ""


def test_compare_is_one_table_with_the_delta_against_dense(cli, seeded):
    rows = json.loads(ok(cli("compare", seeded.dense, seeded.moe, seeded.loner, "--json")))
    dense, moe, loner = rows
    assert dense["delta_vs_dense"] is None and dense["min_usage_pct"] is None
    assert moe["val_ce"] == 5.0 and moe["perplexity"] == pytest.approx(math.exp(5.0))
    assert moe["tokens_per_sec"] == 2000  # the mean of the epochs
    assert moe["min_usage_pct"] == 1.0  # the final evaluation, the least-used layer
    assert moe["drop_pct"] == pytest.approx(30.0)  # the final epoch, the worst layer
    assert moe["imbalance"] == 0.9  # the final epoch's training, the worst layer
    assert moe["delta_vs_dense"] == pytest.approx(5.0 - 5.24)  # against its baseline
    # no baseline of its own: against the dense run among those given
    assert loner["delta_vs_dense"] == pytest.approx(5.5 - 5.24)
    assert loner["dense_id"] == seeded.dense

    alone = json.loads(ok(cli("compare", seeded.loner, "--json")))[0]
    assert alone["delta_vs_dense"] is None  # no baseline, no dense run given
    fetched = json.loads(ok(cli("compare", seeded.moe, "--json")))[0]
    assert fetched["delta_vs_dense"] == pytest.approx(-0.24)  # its baseline, fetched

    as_csv = list(csv.DictReader(io.StringIO(ok(cli("compare", seeded.dense, seeded.moe,
                                                       seeded.loner, "--csv")))))  # fmt: skip
    assert [int(row["id"]) for row in as_csv] == [seeded.dense, seeded.moe, seeded.loner]
    assert list(as_csv[1]) == list(moe)  # the same figures as --json, by the same names
    assert float(as_csv[1]["delta_vs_dense"]) == pytest.approx(5.0 - 5.24)
    assert float(as_csv[1]["drop_pct"]) == pytest.approx(30.0)
    assert as_csv[1]["kind"] == "baseline" and as_csv[0]["delta_vs_dense"] == ""

    table = ok(cli("compare", seeded.dense, seeded.moe, seeded.loner))
    header = table.splitlines()[0]
    for column in ("name", "val CE", "perplexity", "tokens/s", "min usage", "drop rate",
                   "imbalance", "Δ vs dense"):  # fmt: skip
        assert column in header
    moe_line = next(line for line in table.splitlines() if "r-moe" in line)
    assert moe_line.split() == [str(seeded.moe), "r-moe", "succeeded", "5.0000", "148.4",
                                "2,000", "1.0%", "30.0%", "0.90", "-0.2400",
                                str(seeded.dense)]  # fmt: skip
    dense_line = next(line for line in table.splitlines() if "r-dense" in line)
    assert dense_line.split() == [str(seeded.dense), "r-dense", "succeeded", "5.2400", "188.7",
                                  "1,000"]  # fmt: skip
    assert "provisional" not in table  # every run has ended
    # the runs are micro's: the comparison says what micro's differences are worth
    assert "note: micro is a smoke-test size" in table
    assert not any(line != line.rstrip() for line in table.splitlines())  # piped: no padding


def test_compare_marks_an_unfinished_runs_delta_provisional(cli, http, settings, seeded):
    run_id = http.post("/experiments", json={**MICRO, "name": "r-going", "preset": "top2",
                                             "baseline_id": seeded.dense}).json()["id"]  # fmt: skip
    owner = "test-worker-going"
    assert claim(settings.database_url, run_id, owner).outcome is leases.ClaimOutcome.claimed
    write(settings.database_url, run_id, owner, epoch_record(1, 5.31))  # val CE 5.30
    try:
        rows = json.loads(ok(cli("compare", seeded.moe, run_id, "--json")))
        assert [row["delta_provisional"] for row in rows] == [False, True]
        table = ok(cli("compare", seeded.moe, run_id)).splitlines()
        going = next(line.split() for line in table if "r-going" in line)
        assert going[2] == "running" and going[-2:] == ["+0.0600*", str(seeded.dense)]
        assert f"*: provisional (run {run_id}): " in "\n".join(table)
    finally:
        with session_scope(settings.database_url) as session:
            leases.finish_experiment(session=session, experiment_id=run_id, owner=owner,
                                     status=Status.cancelled)  # fmt: skip


def test_a_dense_runs_routing_fields_are_not_its_differences(cli, seeded):
    shown = ok(cli("show", seeded.dense))
    fields = {line.split()[0] for line in shown.splitlines() if line.split()}
    assert "config.dropout" in fields and "base.ffn_dim" in fields
    assert not fields & {"config.top_k", "config.capacity_factor", "config.expert_dim",
                         "base.moe_layers", "base.num_experts"}  # fmt: skip
    assert "(a dense run: no routing)" in shown

    # dense against a top2 run: top2's routing is no difference from a run without a router
    table = ok(cli("compare", seeded.dense, seeded.loner))
    differing = table[table.index("hyper-parameters that differ") :].splitlines()
    names = [line.split()[0] for line in differing[3:] if line.split()]
    assert "config.early_stopping_patience" in names  # dense_patience: a real difference
    assert not {"config.top_k", "config.capacity_factor", "config.name"} & set(names)
    # among MoE runs, it is one; the dense run's cell stays empty
    table = ok(cli("compare", seeded.dense, seeded.moe, seeded.loner))
    top_k = next(line for line in table.splitlines() if line.startswith("config.top_k"))
    assert top_k.split() == ["config.top_k", "1", "2"]


def test_verdict_shows_each_criterion(cli, seeded):
    text = ok(cli("verdict", seeded.moe))
    assert text.splitlines()[0] == (
        f"experiment {seeded.moe} against dense run {seeded.dense}: passed"
    )
    primary = next(line for line in text.splitlines() if "primary" in line)
    assert primary.split()[0] == "✓" and "val CE 5.0000 vs dense 5.2400" in primary
    assert "Δ -0.2400" in primary
    tertiary = next(line for line in text.splitlines() if "tertiary" in line)
    assert tertiary.split()[0] == "✓" and "min usage 12.5%" in tertiary
    assert "secondary" in text and "significance unknown" in text
    # the speed ratio says which epochs it counts: two here, so the second alone
    secondary = text[text.index("secondary") : text.index("tertiary")]
    assert "epoch 2, the first (warm-up" in " ".join(secondary.split()), text
    assert json.loads(ok(cli("verdict", seeded.moe, "--json")))["passed"] is True

    none = cli("verdict", seeded.loner)
    assert none.exit_code == 1 and none.stderr.startswith("error: 409 ")
    assert none.stderr.count("\n") == 1


def test_watch_of_a_finished_run_prints_its_epochs_once_the_outcome_and_verdict(cli, seeded):
    result = cli("watch", seeded.moe)
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert epochs == [
        "epoch 1/2  train loss 6.0000  val CE 5.9900  val loss 6.0000  1,000 tok/s  0s",
        "epoch 2/2  train loss 5.0100  val CE 5.0000  val loss 5.0100  3,000 tok/s  0s",
    ]
    assert f"experiment {seeded.moe} succeeded: best val CE 5.0000" in result.stdout
    assert f"verdict against dense run {seeded.dense}: passed" in result.stdout
    assert any(line.split()[:2] == ["✓", "primary"] for line in lines)

    failed = cli("watch", seeded.failed)
    assert failed.exit_code == 1
    assert f"experiment {seeded.failed} failed: RuntimeError: out of memory" in failed.stdout


def test_logs_follow_a_run_until_it_ends(cli, http, settings):
    run = http.post("/experiments", json={**MICRO, "name": "r-logs"}).json()
    log = artifacts.run_dir(settings, run["run_key"]) / artifacts.LOG
    log.parent.mkdir(parents=True)
    log.write_text("attempt 1\n")
    owner = "test-worker-logs"
    assert claim(settings.database_url, run["id"], owner).outcome is leases.ClaimOutcome.claimed

    def worker() -> None:
        for line in ("epoch 1\n", "epoch 2\n"):
            time.sleep(0.3)
            with log.open("a") as out:
                out.write(line)
        with session_scope(settings.database_url) as session:
            leases.finish_experiment(session=session, experiment_id=run["id"], owner=owner,
                                   status=Status.succeeded)  # fmt: skip

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        followed = cli("logs", run["id"], "-f", "--interval", "0.05")
    finally:
        thread.join()
    assert followed.exit_code == 0, followed.stderr
    assert followed.stdout == "attempt 1\nepoch 1\nepoch 2\n"
    assert ok(cli("logs", run["id"])) == "attempt 1\nepoch 1\nepoch 2\n"


def test_download_lists_and_streams_artifacts(cli, seeded, settings, http, tmp_path):
    run = http.get(f"/experiments/{seeded.moe}").json()
    directory = artifacts.run_dir(settings, run["run_key"])
    directory.mkdir(parents=True, exist_ok=True)
    payload = bytes(range(256)) * 4096  # 1 MiB, binary
    (directory / artifacts.MODEL).write_bytes(payload)
    listing = ok(cli("download", seeded.moe))
    assert "model.pt" in listing and "1.0 MB" in listing
    assert json.loads(ok(cli("download", seeded.moe, "--json")))["items"][0]["size"] == len(payload)
    assert ok(cli("artifacts", seeded.moe)) == listing  # the API's word for them, the same

    out = ok(cli("download", seeded.moe, "model.pt", "-o", tmp_path / "got"))
    assert out.strip() == f"wrote {tmp_path / 'got' / 'model.pt'} (1.0 MB)"
    assert (tmp_path / "got" / "model.pt").read_bytes() == payload
    assert not list((tmp_path / "got").glob("*.part"))

    missing = cli("download", seeded.moe, "checkpoint.pt", "-o", tmp_path)
    assert missing.exit_code == 1
    assert missing.stderr == f"error: 404 experiment {seeded.moe} has no checkpoint.pt (yet)\n"
    assert not (tmp_path / "checkpoint.pt").exists()


def test_cancel_and_delete(cli, http, settings):
    queued = http.post("/experiments", json={**MICRO, "name": "r-cancel"}).json()["id"]
    refused = cli("delete", queued, "--yes")
    assert refused.exit_code == 1 and refused.stderr.startswith("error: 409 ")
    assert ok(cli("cancel", queued)).strip() == f"experiment {queued} cancelled"

    kept = cli("delete", queued, input="n\n")
    assert kept.exit_code == 1  # declined: nothing deleted
    assert http.get(f"/experiments/{queued}").status_code == 200
    assert ok(cli("delete", queued, input="y\n")).endswith(f"deleted experiment {queued}\n")
    assert http.get(f"/experiments/{queued}").status_code == 404
    gone = cli("delete", queued, "--yes")
    assert gone.stderr == f"error: 404 experiment {queued} not found\n"


def test_study_show_prints_members_and_what_the_verdicts_wait_for(cli, http):
    study = http.post(
        "/studies",
        json={"name": "r-study", "base_preset": "micro", "experiments": ["baseline", "top2"],
              "base": {"max_train_tokens": 4096}},
    ).json()  # fmt: skip
    text = ok(cli("study", "show", study["id"]))
    assert text.splitlines()[0].startswith(f"study {study['id']} 'r-study': queued")
    for member in study["members"]:
        assert any(line.split()[:2] == [str(member["id"]), member["name"]]
                   for line in text.splitlines())  # fmt: skip
    verdicts, note = text[text.index("verdicts against dense") :].split("\nnote: ")
    assert [line.split()[0] for line in verdicts.splitlines()[3:] if line[:1] != " "] == [
        "baseline", "top2"
    ]  # fmt: skip
    assert note.startswith("micro is a smoke-test size")  # a study on micro says what it is
    baseline_id = next(m["id"] for m in study["members"] if m["name"] == "baseline")
    assert f"experiment {baseline_id} is queued" in " ".join(verdicts.split())
    assert json.loads(ok(cli("study", "show", study["id"], "--json")))["id"] == study["id"]
    listed = ok(cli("study", "ls"))
    assert any(line.split()[:2] == [str(study["id"]), "r-study"] for line in listed.splitlines())


def test_study_show_prints_each_difference_with_its_interval_and_p_value(cli, http, settings):
    study = http.post("/studies", json={"name": "judged", "base_preset": "micro",
                                        "experiments": ["top2"], "seeds": 3}).json()  # fmt: skip
    top2_ce = iter([4.95, 4.935, 4.97])  # paired Δ -0.05, -0.065, -0.03
    for member in study["members"]:
        ce = 5.0 if member["dense"] else next(top2_ce)
        succeed(settings.database_url, member["id"], result(ce, dense=member["dense"]))
    row = http.get(f"/studies/{study['id']}").json()["preset_verdicts"][0]
    delta = row["val_loss_delta"]
    assert delta["df"] == 2 and delta["significant"] is True  # t = -4.8, beyond 4.303

    text = ok(cli("study", "show", study["id"]))
    verdicts = text[text.index("verdicts against dense") :].splitlines()
    header = verdicts[1].split()
    assert header[4:12] == ["Δ", "val", "CE", "95%", "CI", "p", "Δ", "gap"]
    (line,) = [line for line in verdicts if line.startswith("top2")]
    interval = f"[{delta['ci_low']:+.4f}, {delta['ci_high']:+.4f}]"
    assert f"{delta['mean']:+.4f} ± {delta['se']:.4f}   {interval}" in line
    assert f"{delta['p_value']:.4f}" in line and line.split()[-1] == "yes"
    footnote = " ".join(verdicts[-2:])
    assert "95% CI: Δ ± t·SE, Student's t with n - 1 df" in footnote
    assert "two-sided paired t-test" in footnote and "p < 0.05" in footnote


def test_study_artifacts_and_delete(cli, http, tmp_path):
    study = http.post(
        "/studies",
        json={"name": "r-gone", "base_preset": "micro", "experiments": ["baseline"],
              "base": {"max_train_tokens": 4096}},
    ).json()  # fmt: skip
    listing = ok(cli("study", "download", study["id"]))
    assert "experiment_results.json" in listing and "dense_model.pt" not in listing
    out = ok(cli("study", "download", study["id"], "experiment_results.json", "-o", tmp_path))
    assert out.startswith(f"wrote {tmp_path / 'experiment_results.json'} (")
    json.loads((tmp_path / "experiment_results.json").read_text())
    missing = cli("study", "download", study["id"], "dense_model.pt", "-o", tmp_path)
    assert missing.exit_code == 1 and missing.stderr.startswith("error: 404 ")

    refused = cli("study", "delete", study["id"], "--yes")  # its runs are queued
    assert refused.exit_code == 1 and refused.stderr.startswith("error: 409 ")
    for member in study["members"]:
        ok(cli("cancel", member["id"]))
    assert ok(cli("study", "delete", study["id"], "--yes")) == f"deleted study {study['id']}\n"
    assert http.get(f"/studies/{study['id']}").status_code == 404
    assert http.get(f"/experiments/{study['dense_id']}").status_code == 404


def test_a_token_is_sent_as_a_bearer(settings, cli):
    from pydantic import SecretStr

    from moe_lab.client import Client
    from tests.client import make_client

    guarded = settings.model_copy(update={"api_token": SecretStr("s3cret")})
    with make_client(guarded) as http:
        refused = cli("ls", client=Client(http=http, token=""))
        assert (refused.exit_code, refused.stderr) == (
            1, "error: 401 missing or wrong bearer token (no token was sent: moe-lab login, or "
               "MOE_API_TOKEN)\n"
        )  # fmt: skip
        assert ok(cli("ls", "--json", client=Client(http=http, token="s3cret")))


def complete(api, words: str, *, shell: str = "bash") -> list[str]:
    """What the shell's completion function gets for `words` (typer's _MOE_LAB_COMPLETE,
    as the installed script asks), against `api`."""
    from typer.testing import CliRunner

    from moe_lab.cli import app

    env = {"_MOE_LAB_COMPLETE": f"complete_{shell}", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
           "_TYPER_COMPLETE_ARGS": words}  # fmt: skip
    result = CliRunner().invoke(app, [], env=env, obj=api, prog_name="moe-lab")
    assert result.exit_code == 0 and result.stderr == "", result.output
    return [word for word in result.stdout.splitlines() if word]


def test_completion_offers_the_apis_run_study_and_sweep_ids(api, seeded, http):
    study = http.post("/studies", json={**MICRO, "name": "c-study", "experiments": ["top2"]})
    study_id = study.json()["id"]
    runs = {str(r["id"]) for r in api.list_experiments(limit=100)["items"]}
    for command in ("show", "metrics", "verdict", "tag", "note", "cancel", "logs", "delete",
                    "download", "artifacts", "watch", "compare 1", "admin priority"):  # fmt: skip
        assert set(complete(api, f"moe-lab {command} ")) == runs, command
    assert set(complete(api, "moe-lab submit x --baseline ")) == runs
    prefix = str(seeded.dense)  # a prefix: the ids that start with it
    assert set(complete(api, f"moe-lab show {prefix}")) == {i for i in runs if i.startswith(prefix)}
    # zsh shows what each id names
    assert f'"{seeded.moe}":"r-moe (baseline, succeeded)"' in complete(
        api, "moe-lab show ", shell="zsh"
    )
    studies = complete(api, "moe-lab study show ")
    assert str(study_id) in studies and studies == complete(api, "moe-lab ls --study ")
    assert complete(api, "moe-lab sweep show ") == []  # none yet: nothing, and no error
