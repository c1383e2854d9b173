"""Reward models: the step-tag layout shared by training and serving, aggregates, metrics,
the label modes' losses, and the reward role's handler on a fake engine."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest

from services.model_server.app import create_app
from services.model_server.settings import ModelServerSettings
from services.worker.training.data import IGNORE_INDEX
from services.worker.training.reward import (
    RewardEncoder,
    reward_loss,
    split_by_problem,
)
from shared.job_schemas import TrainOrmSpec, TrainPrmSpec
from shared.reward import (
    RewardInput,
    aggregates,
    auroc,
    classification_metrics,
    encode_outcome,
    encode_steps,
    pick_step_tag,
    probabilities,
)
from shared.schemas import Role
from tests.unit.conftest import FakeEngine

pytestmark = pytest.mark.unit

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
STEPS = ["Tom starts with 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The answer is: 7"]


def prm_spec(**kw: Any) -> TrainPrmSpec:
    return TrainPrmSpec.model_validate(
        {"kind": "train_prm", "data": {"train": ["rows.jsonl"]}, **kw}
    )


class FakeRewardEngine(FakeEngine):
    """Returns, per tag, a score that encodes the step's index; records what it was given."""

    def __init__(self, tokenizer: Any, kind: str = "prm", max_model_len: int = 512) -> None:
        super().__init__(tokenizer, max_model_len)
        self.reward_kind = kind
        self.step_tag_id = pick_step_tag(tokenizer)[1]
        self.calls: list[list[RewardInput]] = []

    async def reward(self, inputs: list[RewardInput]) -> list[list[float]]:
        self.calls.append(inputs)
        if self.reward_kind == "orm":
            return [[0.25 + 0.5 * (i % 2)] for i in range(len(inputs))]
        return [[0.9 - 0.2 * j for j in range(len(x.tag_positions))] for x in inputs]


def test_step_tag_is_one_token_and_tags_follow_each_step(tokenizer: Any) -> None:
    tag, tag_id = pick_step_tag(tokenizer)
    assert tokenizer(tag, add_special_tokens=False)["input_ids"] == [tag_id]
    enc = encode_steps(tokenizer, QUESTION, STEPS, tag_id)
    assert [enc.input_ids[p] for p in enc.tag_positions] == [tag_id] * len(STEPS)
    assert enc.input_ids.count(tag_id) == len(STEPS)
    assert enc.step_ends == [p + 1 for p in enc.tag_positions]
    # the text between tags is each step, tokenized on its own
    second = enc.input_ids[enc.tag_positions[0] + 1 : enc.tag_positions[1]]
    assert tokenizer.decode(second) == STEPS[1] + "\n"


def test_a_question_or_step_spelling_the_tag_cannot_add_a_tag(tokenizer: Any) -> None:
    tag, tag_id = pick_step_tag(tokenizer)
    enc = encode_steps(tokenizer, f"What is {tag}?", [f"3 {tag} 4", "7"], tag_id)
    assert enc.input_ids.count(tag_id) == 2
    assert [enc.input_ids[p] for p in enc.tag_positions] == [tag_id, tag_id]


def test_a_named_step_tag_must_be_one_token(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="single token"):
        pick_step_tag(tokenizer, "<|definitely not one token|>")


async def test_training_and_serving_build_identical_inputs(tokenizer: Any, asgi_client) -> None:  # type: ignore[no-untyped-def]
    """The rows the trainer sees and the inputs the reward service runs are the same ids with
    the labels exactly at the served tag positions."""
    engine = FakeRewardEngine(tokenizer)
    encoder = RewardEncoder(prm_spec(), tokenizer, engine.step_tag_id, max_length=512)
    row = {"prompt": QUESTION, "completions": STEPS, "labels": [True, True, False]}
    trained, cut = encoder.encode(row, Counter())
    assert trained is not None and not cut
    app = create_app(ModelServerSettings(role=Role.reward), engine=engine)
    async with asgi_client(app) as client:
        r = await client.post("/v1/reward", json={"question": QUESTION, "solutions": [STEPS]})
    assert r.status_code == 200, r.text
    (served,) = engine.calls[0]
    assert served.input_ids == trained.input_ids
    labelled = [i for i, y in enumerate(trained.labels) if y != IGNORE_INDEX]
    assert labelled == served.tag_positions
    assert [trained.labels[i] for i in labelled] == [1.0, 1.0, 0.0]


async def test_reward_endpoint_scores_every_solution_in_one_call(
    tokenizer: Any, asgi_client
) -> None:  # type: ignore[no-untyped-def]
    engine = FakeRewardEngine(tokenizer)
    app = create_app(ModelServerSettings(role=Role.reward), engine=engine)
    async with asgi_client(app) as client:
        r = await client.post(
            "/v1/reward", json={"question": QUESTION, "solutions": [STEPS, STEPS[:1]]}
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 2
    assert body["kind"] == "prm"
    first, second = body["results"]
    assert first["step_scores"] == pytest.approx([0.9, 0.7, 0.5])
    assert first["min"] == pytest.approx(0.5)
    assert first["prod"] == pytest.approx(0.9 * 0.7 * 0.5)
    assert first["last"] == pytest.approx(0.5)
    assert first["mean"] == pytest.approx(0.7)
    assert second["step_scores"] == pytest.approx([0.9])
    assert body["usage"]["prompt_tokens"] == sum(len(x.input_ids) for x in engine.calls[0])


async def test_orm_results_repeat_the_one_score(tokenizer: Any, asgi_client) -> None:  # type: ignore[no-untyped-def]
    engine = FakeRewardEngine(tokenizer, kind="orm")
    app = create_app(ModelServerSettings(role=Role.reward), engine=engine)
    async with asgi_client(app) as client:
        r = await client.post("/v1/reward", json={"question": QUESTION, "solutions": [STEPS]})
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    assert result["step_scores"] == []
    assert {result[k] for k in ("min", "prod", "last", "mean")} == {0.25}
    (served,) = engine.calls[0]
    assert (
        served.input_ids == encode_outcome(tokenizer, QUESTION, STEPS, engine.step_tag_id).input_ids
    )


async def test_steps_past_the_context_are_a_422_naming_solution_and_step(
    tokenizer: Any, asgi_client
) -> None:  # type: ignore[no-untyped-def]
    engine = FakeRewardEngine(tokenizer, max_model_len=64)
    app = create_app(ModelServerSettings(role=Role.reward), engine=engine)
    long_step = "seven " * 60
    async with asgi_client(app) as client:
        r = await client.post(
            "/v1/reward",
            json={"question": QUESTION, "solutions": [STEPS[:1], [STEPS[0], long_step]]},
        )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "solutions[1][1]"
    assert "solution 1, step 1" in error["message"]
    assert engine.calls == []


async def test_reward_on_a_generative_role_is_a_422(fake_engine: Any, asgi_client) -> None:  # type: ignore[no-untyped-def]
    app = create_app(ModelServerSettings(role=Role.agent), engine=fake_engine)
    async with asgi_client(app) as client:
        r = await client.post("/v1/reward", json={"question": "q", "solutions": [["a"]]})
    assert r.status_code == 422
    assert "MODEL_SERVER_ROLE=reward" in r.json()["error"]["message"]


def test_reward_role_refuses_remote_and_non_reward_models(model_path: Any) -> None:
    from services.model_server.engines import build_reward_engine
    from shared.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="loads its model itself") as err:
        build_reward_engine(
            ModelServerSettings(role=Role.reward, engine="remote", remote_url="http://x")
        )
    assert err.value.field == "engine"
    with pytest.raises(InvalidRequest, match="not a reward model") as err:
        build_reward_engine(ModelServerSettings(role=Role.reward, model=str(model_path)))
    assert err.value.field == "model"


# --------------------------------------------------------------------------------------------
# Aggregates, probabilities, metrics


def test_aggregates() -> None:
    agg = aggregates([0.9, 0.5, 0.8])
    assert agg["min"] == 0.5
    assert agg["prod"] == pytest.approx(0.36)
    assert agg["last"] == 0.8
    assert agg["mean"] == pytest.approx(2.2 / 3)
    assert aggregates([]) == {"min": 0.0, "prod": 0.0, "last": 0.0, "mean": 0.0}


def test_probabilities_softmax_and_sigmoid() -> None:
    assert probabilities([0.0]) == pytest.approx(0.5)
    assert probabilities([2.0]) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert probabilities([-800.0]) == pytest.approx(0.0)
    assert probabilities([1.0, 3.0]) == pytest.approx(math.exp(3) / (math.exp(1) + math.exp(3)))
    assert probabilities([900.0, -900.0]) == pytest.approx(0.0)


def test_auroc_matches_sklearn_with_ties() -> None:
    metrics = pytest.importorskip("sklearn.metrics")  # installed with the worker extra
    roc_auc_score = metrics.roc_auc_score

    rng = random.Random(3)
    for _ in range(20):
        labels = [rng.random() < 0.4 for _ in range(30)]
        labels[0], labels[1] = True, False
        scores = [round(rng.random(), 1) for _ in range(30)]  # many ties
        assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert auroc([0.1, 0.2], [True, True]) is None


def test_classification_metrics() -> None:
    m = classification_metrics([0.9, 0.8, 0.3, 0.6], [True, False, False, True])
    assert m["accuracy"] == 0.75  # predicted T, T, F, T
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == 1.0
    assert m["f1"] == pytest.approx(0.8)
    assert m["auroc"] == pytest.approx(0.75)


# --------------------------------------------------------------------------------------------
# Label modes and the data split


def test_hard_labels_train_with_cross_entropy_on_tags_only() -> None:
    import torch
    import torch.nn.functional as F

    logits = torch.tensor([[[0.0, 2.0], [5.0, -5.0], [1.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1.0, 0.0]])
    loss = reward_loss(logits, labels, prm=True, two_class=True)
    expected = F.cross_entropy(logits[0, 1:], torch.tensor([1, 0]))
    assert loss.item() == pytest.approx(expected.item())


def test_soft_labels_keep_their_fraction_under_bce() -> None:
    import torch

    logits = torch.tensor([[[0.0], [1.0], [9.0]]])
    labels = torch.tensor([[0.25, IGNORE_INDEX, 0.75]])
    loss = reward_loss(logits, labels, prm=True, two_class=False)

    def bce(x: float, y: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    assert loss.item() == pytest.approx((bce(0.0, 0.25) + bce(9.0, 0.75)) / 2, rel=1e-5)


def test_soft_mode_reads_soft_labels_and_orm_reads_outcomes(tokenizer: Any) -> None:
    tag_id = pick_step_tag(tokenizer)[1]
    row = {
        "prompt": QUESTION,
        "completions": STEPS,
        "labels": [True, True, False],
        "soft_labels": [1.0, 0.5, 0.0],
    }
    soft = RewardEncoder(prm_spec(label_mode="soft"), tokenizer, tag_id, 512)
    enc, _ = soft.encode(row, Counter())
    assert enc is not None
    assert [y for y in enc.labels if y != IGNORE_INDEX] == [1.0, 0.5, 0.0]
    assert enc.hard == [True, True, False]
    orm_spec = TrainOrmSpec.model_validate({"kind": "train_orm", "data": {"train": ["x"]}})
    orm = RewardEncoder(orm_spec, tokenizer, tag_id, 512)
    out, _ = orm.encode(
        {"prompt": QUESTION, "completion": "\n".join(STEPS), "label": True}, Counter()
    )
    assert out is not None and out.labels == [1.0] and out.input_ids[-1] == tag_id


def test_rows_are_truncated_by_whole_steps_and_bad_rows_counted(tokenizer: Any) -> None:
    tag_id = pick_step_tag(tokenizer)[1]
    full = encode_steps(tokenizer, QUESTION, STEPS, tag_id)
    encoder = RewardEncoder(prm_spec(), tokenizer, tag_id, max_length=full.step_ends[1])
    rows = [
        {"prompt": QUESTION, "completions": STEPS, "labels": [True, True, False]},
        {"prompt": QUESTION, "completions": STEPS, "labels": [True]},
        {"prompt": QUESTION, "completions": [], "labels": []},
    ]
    out, report = encoder.encode_all(rows)
    assert len(out) == 1 and out[0].hard == [True, True]
    assert out[0].input_ids == full.input_ids[: full.step_ends[1]]
    assert report["truncated"] == 1
    assert report["dropped"] == {"bad_row": 1, "no_steps": 1}


def test_held_out_split_keeps_problems_whole() -> None:
    rows = [{"id": f"p{p}:{s}", "prompt": f"q{p}"} for p in range(10) for s in range(3)]
    train, dev = split_by_problem(rows, 0.2, seed=0)
    train_p = {r["id"].split(":")[0] for r in train}
    dev_p = {r["id"].split(":")[0] for r in dev}
    assert len(dev_p) == 2 and not train_p & dev_p
    assert len(train) + len(dev) == 30
