"""`moe-lab submit` and `moe-lab study submit`: flags, files, --set, dry runs, errors as one
line, retries that never make a second run. Against the real app and Postgres, no worker."""

from __future__ import annotations

import json

import pytest

from local_deployment.servers import free_port
from moe_lab.client import Client

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)

MICRO = ["--base-preset", "micro", "--set", "base.max_train_tokens=4096"]


def created(result) -> dict:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def total(api: Client, **filters) -> int:
    return api.list_experiments(**filters)["total"]


def test_flags_and_set_values_become_the_request_body(cli, api):
    run = created(
        cli("submit", "flags", "--preset", "top2", *MICRO,
            "--set", "config.dropout=0.25", "--set", "config.top_k=1",
            "--set", "config.aux_weight=1e-3", "--set", "base.num_epochs=3",
            "--set", "base.dataset_config=wikitext-2-v1", "--set", "base.moe_layers=[1]",
            "--set", 'config.gating_temp_schedule={"start": 2.0, "end": 0.5, "epochs": 2}',
            "--tag", "sweep", "--tag", "t-1", "--json")
    )  # fmt: skip
    stored = api.experiment(run["id"])
    assert stored["status"] == "queued" and stored["preset"] == "top2"
    assert stored["base_preset"] == "micro" and stored["tags"] == ["sweep", "t-1"]
    config = stored["config"]
    # JSON where it parses: an int stays an int, a float a float, [] a list, {} an object;
    # anything else is the text itself
    assert config["top_k"] == 1 and isinstance(config["top_k"], int)
    assert config["dropout"] == 0.25 and config["aux_weight"] == 0.001
    assert stored["base"]["moe_layers"] == [1]
    assert stored["base"]["dataset_config"] == "wikitext-2-v1"
    assert config["gating_temp_schedule"] == {"start": 2.0, "end": 0.5, "epochs": 2}
    assert stored["num_epochs"] == 3 and stored["base"]["max_train_tokens"] == 4096


def test_a_yaml_file_is_the_body_and_flags_override_it(cli, api, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "name: from-file\npreset: baseline\nbase_preset: micro\n"
        "config: {dropout: 0.1, top_k: 1}\nbase: {num_epochs: 2}\ntags: [filed]\n"
    )
    run = created(cli("submit", "--file", path, "--json"))
    assert (run["name"], run["preset"], run["num_epochs"]) == ("from-file", "baseline", 2)
    assert run["config"]["dropout"] == 0.1 and run["tags"] == ["filed"]

    run = created(
        cli("submit", "renamed", "--file", path, "--preset", "top2",
            "--set", "config.dropout=0.3", "--tag", "flagged", "--json")
    )  # fmt: skip
    assert (run["name"], run["preset"], run["num_epochs"]) == ("renamed", "top2", 2)
    assert run["config"]["dropout"] == 0.3 and run["config"]["top_k"] == 1  # the file's
    assert run["tags"] == ["flagged"]


def test_a_json_file_and_a_dense_run(cli, tmp_path):
    path = tmp_path / "dense.json"
    path.write_text(json.dumps({"name": "dense", "base_preset": "micro"}))
    run = created(cli("submit", "--file", path, "--dense", "--json"))
    assert run["dense"] is True and run["preset"] is None


def test_the_human_output_says_what_was_queued_and_how_to_follow_it(cli):
    result = cli("submit", "plain", *MICRO)
    assert result.exit_code == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("submitted experiment ") and "'plain'" in first
    assert "custom on micro" in first and "(queued)" in first
    run_id = first.split()[2]
    assert f"moe-lab watch {run_id}" in result.stdout


def test_dry_run_prints_the_plan_and_stores_nothing(cli, api):
    before = total(api)
    result = cli("submit", "plan", "--preset", "top2", "--base-preset", "micro", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "dry run: nothing stored or queued" in result.stdout
    plan = created(cli("submit", "plan", "--preset", "top2", *MICRO, "--dry-run", "--json"))
    assert plan["config"]["top_k"] == 2 and plan["active_params"] < plan["params"]
    assert f"{plan['params']:,} ({plan['active_params']:,} active per token)" in result.stdout
    assert "MoE, top-2 of 8 experts" in result.stdout
    assert total(api) == before


def test_a_422_is_one_line_on_stderr_naming_the_field(cli, api):
    before = total(api)
    result = cli("submit", "bad", "--set", "config.top_k=9", *MICRO)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == ("error: 422 config.top_k: top_k (9) exceeds base.num_experts (8)\n")
    # a field the engine does not know, and a value out of range: each located, one line
    result = cli("submit", "bad", "--set", "config.top_kk=2", "--set", "config.dropout=2")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "config.top_kk: Extra inputs are not permitted" in result.stderr
    assert "config.dropout: Input should be less than 1 (got 2)" in result.stderr
    assert total(api) == before


def test_a_missing_baseline_is_the_apis_404_as_one_line(cli):
    result = cli("submit", "orphan", "--baseline", "99999", *MICRO)
    assert result.exit_code == 1
    assert result.stderr == "error: 404 baseline 99999 not found\n"


def test_a_bad_command_line_is_refused_before_any_request(cli, api):
    before = total(api)
    for args, message in [
        (["x", "--set", "top_k=2"], "--set takes config.FIELD=VALUE or base.FIELD=VALUE"),
        (["x", "--set", "config.top_k"], "not 'config.top_k'"),
        (["x", "--set", "name.x=1"], "not 'name.x=1'"),
        ([], "give the run a NAME"),
    ]:
        result = cli("submit", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and result.stderr.count("\n") == 1
    assert total(api) == before


def test_an_unreadable_file_is_one_line(cli, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    result = cli("submit", "--file", path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot read {path}: ")
    assert result.stderr.count("\n") == 1
    path.write_text("- a list\n")
    result = cli("submit", "--file", path)
    assert "must hold an object (the request body), not list" in result.stderr


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.yaml", "", "is empty; it must hold the request body"),
        ("blank.yaml", "\n  \n# only a comment\n", "is empty; it must hold the request body"),
        ("empty.json", "", "cannot read"),
        ("list.yaml", "- a\n- b\n", "must hold an object (the request body), not list"),
        ("text.yaml", "just words\n", "must hold an object (the request body), not str"),
        ("number.json", "3", "must hold an object (the request body), not int"),
        ("nan.yaml", "base: {learning_rate: .nan}\n", "base.learning_rate: nan is not a finite"),
        ("inf.json", '{"config": {"dropout": Infinity}}', "config.dropout: inf is not a finite"),
        ("deep.yaml", "config: {gating_temp_schedule: {start: 1.0e+309}}\n",
         "config.gating_temp_schedule.start: inf is not a finite"),
    ],
)  # fmt: skip
def test_an_empty_or_non_mapping_or_non_finite_file_submits_nothing(
    cli, api, tmp_path, name, text, message
):
    before = total(api)
    path = tmp_path / name
    path.write_text(text)
    result = cli("submit", "a", "--file", path, "--json")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
    assert total(api) == before


@pytest.mark.parametrize("command", [("submit", "--file"), ("sweep", "submit")])
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("base: {seed: 2024-01-01}\n",
         "base.seed: 2024-01-01 is a date, which JSON has not; quote it to send text"),
        ("name: 2024-01-01 10:30:00\n", "name: 2024-01-01 10:30:00 is a date and time"),
        ("name: !!binary aGVsbG8=\n", "name: binary data (!!binary), which JSON has not"),
        ("tags: !!set {a, b}\n", "tags: a set (!!set), which JSON has not; write a list"),
        ("space: {top_k: {choices: [1, 2024-01-01]}}\n", "space.top_k.choices[1]: 2024-01-01"),
        ("config: {1: 2}\n", "config: the key 1 is not text (JSON's keys are)"),
        ("2024-01-01: x\n", "the key 2024-01-01 is not text"),
        ("base: {null: 1}\n", "base: the key None is not text"),
    ],
)  # fmt: skip
def test_a_yaml_value_json_has_not_is_one_line_and_submits_nothing(
    cli, api, tmp_path, command, text, message
):
    # A date, !!binary or !!set could not be sent: a traceback of the JSON encoder before.
    before = total(api), api.list_sweeps()["total"]
    path = tmp_path / "body.yaml"
    path.write_text(f"name: a\n{text}" if not text.startswith("name:") else text)
    result = cli(*command, path)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}: "), result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert (total(api), api.list_sweeps()["total"]) == before


@pytest.mark.parametrize(
    ("command", "value", "shown"),
    [
        (("submit", "a"), "NaN", "nan"),
        (("submit", "a"), "Infinity", "inf"),
        (("submit", "a"), "-Infinity", "-inf"),
        (("submit", "a"), "1e309", "inf"),
        (("study", "submit", "s"), "NaN", "nan"),
    ],
)
def test_a_non_finite_set_value_is_one_line_and_submits_nothing(cli, api, command, value, shown):
    before = total(api), api.list_studies()["total"]
    for field in ("base.learning_rate", "base.num_epochs"):
        result = cli(*command, "--set", f"{field}={value}")
        assert result.exit_code == 2, result.output
        assert result.stderr == f"error: {field}: {shown} is not a finite number (JSON has none)\n"
    assert (total(api), api.list_studies()["total"]) == before


def test_an_unreachable_api_is_one_line(cli):
    port = free_port()
    nowhere = Client(f"http://127.0.0.1:{port}")
    for args in (["submit", "x"], ["ls"], ["show", "1"], ["watch", "1"]):
        result = cli(*args, client=nowhere)
        assert result.exit_code == 1, args
        assert result.stderr.startswith(f"error: cannot reach the API at http://127.0.0.1:{port}: ")
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_the_same_idempotency_key_never_makes_a_second_run(cli, api):
    before = total(api)
    args = ["submit", "once", *MICRO, "--idempotency-key", "cli-test-key-1", "--json"]
    first, again = created(cli(*args)), created(cli(*args))
    assert first["id"] == again["id"]
    assert total(api) == before + 1
    # the same key with another body is the API's 409
    result = cli("submit", "other", *MICRO, "--idempotency-key", "cli-test-key-1")
    assert result.exit_code == 1 and result.stderr.startswith("error: 409 ")
    # without a key each submit is a new run: a fresh key every time
    a = created(cli("submit", "twice", *MICRO, "--json"))
    b = created(cli("submit", "twice", *MICRO, "--json"))
    assert a["id"] != b["id"]


def test_study_submit_with_presets_seeds_and_base_sets(cli, api):
    result = cli(
        "study", "submit", "cli-study", "--base-preset", "micro", "-e", "baseline,top2",
        "--seeds", "2", "--set", "base.num_epochs=1", "--json",
    )  # fmt: skip
    study = created(result)
    assert study["experiments"] == ["baseline", "top2"] and study["seeds"] == 2
    assert len(study["members"]) == 6 and study["base"]["num_epochs"] == 1
    dense_member = api.experiment(study["dense_id"])
    assert dense_member["dense"] and dense_member["num_epochs"] == 1
    assert study["base"]["seeds_together"] is None  # unset: the workers' policy decides
    together = created(cli("study", "submit", "stacked", *MICRO, "--seeds", "2",
                           "--seeds-together", "--json"))  # fmt: skip
    assert together["base"]["seeds_together"] is True

    result = cli("study", "submit", "repeated", "-e", "baseline", "-e", "top2", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("dry run: nothing stored") == 1
    # each block says which run it is, then the total; tiny: no word of smoke tests
    labels = [line for line in result.stdout.splitlines() if line.startswith("run ")]
    assert labels == ["run 1 of 3: the dense baseline, seed 1337",
                      "run 2 of 3: preset baseline, seed 1337",
                      "run 3 of 3: preset top2, seed 1337"]  # fmt: skip
    plans = created(cli("study", "submit", "r", "-e", "baseline,top2", "--dry-run", "--json"))
    steps = sum(p["steps_per_epoch"] * p["num_epochs"] for p in plans["runs"])
    total = result.stdout.splitlines()[-1]
    assert total.startswith(f"total: 3 runs (3 runs x 1 seed), {steps:,} optimizer steps, ")
    assert total.endswith("MiB of GPU memory (estimated peak)") and "smoke" not in result.stdout

    result = cli("study", "submit", "r", *MICRO, "-e", "top2", "--seeds", "2", "--dry-run")
    lines = result.stdout.splitlines()
    assert "run 2 of 2: preset top2, once per seed (1337, 1338)" in lines
    assert lines[-2].startswith("total: 4 runs (2 runs x 2 seeds), ")
    assert lines[-1].startswith("note: micro is a smoke-test size: differences between its runs")

    result = cli("study", "submit", "bad", "--set", "config.top_k=2")
    assert result.exit_code == 2 and "--set takes base.FIELD=VALUE" in result.stderr
    result = cli("study", "submit", "bad", "--seeds", "11")
    assert result.exit_code == 1 and result.stderr.startswith("error: 422 seeds: ")


def test_a_baseline_of_another_base_is_refused_in_one_line_naming_what_differs(cli, api):
    dense = created(cli("submit", "dense-micro", "--dense", *MICRO, "--json"))
    before = total(api)
    refused = cli("submit", "live-top2", "--preset", "top2", "--base-preset", "tiny",
                  "--baseline", dense["id"])  # fmt: skip
    assert refused.exit_code == 1
    (line,) = refused.stderr.strip().splitlines()
    assert "baseline_id" in line and "vocab_size 4096 vs 512" in line and "seq_len 64 vs 32" in line
    assert total(api) == before  # nothing stored
    same = created(cli("submit", "top2-micro", "--preset", "top2", *MICRO,
                       "--baseline", dense["id"], "--json"))  # fmt: skip
    assert same["baseline_id"] == dense["id"]


def test_a_misspelt_set_key_says_which_field_it_likely_meant(cli):
    refused = cli("submit", "typo", "--preset", "top2", *MICRO, "--set", "config.topk=2")
    assert refused.exit_code == 1 and len(refused.stderr.splitlines()) == 1
    assert "config.topk" in refused.stderr and "did you mean 'top_k'?" in refused.stderr
