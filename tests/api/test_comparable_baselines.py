"""A verdict only between comparable runs: a baseline whose cross-entropy is measured on
other text, tokens, blocks or validation set is refused where it is named (a 422 naming the
fields that differ, nothing stored), and no path of the store records one (studies and
sweeps store through the same call)."""

from __future__ import annotations

import pytest

from moe_core.comparable import COMPARABLE_FIELDS, NotComparable, differences
from moe_core.config import base_config, get_experiment_configs
from store import catalogue
from store.db import session_scope
from tests.factories import fast_base, request_body

pytestmark = pytest.mark.services  # real Postgres/Redis (see tests/fixtures/services.py)


def test_bases_compare_on_their_text_tokens_blocks_and_validation_set():
    micro, tiny = base_config("micro").model_dump(), base_config("tiny").model_dump()
    assert differences(tiny, micro) == {
        "vocab_size": (4096, 512), "seq_len": (64, 32), "max_val_tokens": (16000, 2048)
    }  # fmt: skip
    # what a study or a sweep varies, and the seed, leave CEs comparable
    varied = base_config("micro", seed=7, num_experts=2, learning_rate=3e-3, num_epochs=9,
                         max_train_tokens=4096, precision="fp32").model_dump()  # fmt: skip
    assert differences(varied, micro) == {}
    for field in COMPARABLE_FIELDS:  # each of the fields alone makes them incomparable
        other = {**micro, field: "other"}
        assert list(differences(other, micro)) == [field]


def test_a_run_against_a_dense_run_of_another_base_is_a_422_and_nothing_is_stored(client):
    dense = client.post("/experiments", json=request_body("dense", dense=True)).json()
    before = client.get("/experiments").json()["total"]
    body = {"name": "live-top2", "preset": "top2", "base_preset": "tiny",
            "baseline_id": dense["id"]}  # fmt: skip
    for query in ("", "?dry_run=true"):
        response = client.post(f"/experiments{query}", json=body)
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["type"] == "baseline_not_comparable"
        assert error["loc"] == ["body", "baseline_id"]
        assert "vocab_size 4096 vs 512" in error["msg"] and "seq_len 64 vs 32" in error["msg"]
    # one field is enough: the same base with another validation set
    other_val = request_body("top2", preset="top2", baseline_id=dense["id"],
                             base=fast_base(max_val_tokens=4096))  # fmt: skip
    response = client.post("/experiments", json=other_val)
    assert response.status_code == 422 and "max_val_tokens 4096 vs 1024" in response.text
    assert client.get("/experiments").json()["total"] == before
    same = client.post("/experiments", json=request_body("top2", preset="top2",
                                                         baseline_id=dense["id"]))  # fmt: skip
    assert same.status_code == 201, same.text


def test_the_store_records_no_incomparable_baseline(database):
    micro, tiny = base_config("micro"), base_config("tiny")
    with session_scope(database) as session:
        dense = catalogue.create_experiment(
            session=session, name="d", config=get_experiment_configs(micro)["baseline"],
            base=micro, dense=True,
        )  # fmt: skip
        with pytest.raises(NotComparable, match="vocab_size 4096 vs 512"):
            catalogue.create_experiment(
                session=session, name="t", config=get_experiment_configs(tiny)["top2"],
                base=tiny, baseline_id=dense.id,
            )  # fmt: skip


def test_a_pair_stored_before_the_check_gets_no_verdict_but_a_409_saying_why(client, settings):
    from sqlalchemy import update

    from store.models import Experiment
    from tests.factories import new_experiment, result, succeed

    dense = new_experiment(settings.database_url, "dense-micro", dense=True)
    moe = new_experiment(settings.database_url, "top2-tiny", seq_len=64, vocab_size=4096)
    with session_scope(settings.database_url) as session:  # as an older API stored it
        session.execute(update(Experiment).where(Experiment.id == moe).values(baseline_id=dense))
        session.commit()
    succeed(settings.database_url, dense, result(5.0, dense=True))
    succeed(settings.database_url, moe, result(5.4, train_eval_ce=5.5))
    response = client.get(f"/experiments/{moe}/verdict")
    assert response.status_code == 409, response.text
    assert "not comparable" in response.json()["detail"]
    assert "vocab_size 4096 vs 512" in response.json()["detail"]


def test_the_criteria_refuse_to_judge_results_of_other_bases():
    from moe_core.criteria import judge, judge_seeds
    from tests.factories import result

    micro, tiny = base_config("micro").model_dump(), base_config("tiny").model_dump()
    run, dense = {**result(5.4), "base": tiny}, {**result(5.0, dense=True), "base": micro}
    with pytest.raises(NotComparable, match="seq_len 64 vs 32"):
        judge(run, dense)
    with pytest.raises(NotComparable):
        judge_seeds([run], [dense])
    assert judge({**run, "base": micro}, dense)["primary"]["val_loss_delta"] is not None
