"""Training a process (``train_prm``) or outcome (``train_orm``) reward model in the training
child (:mod:`.run` dispatches here by the spec's kind), with transformers' ``Trainer``.

- PRM: ``AutoModelForTokenClassification`` on the base model, read at the step tag after each
  step (:func:`shared.reward.encode_steps`). ``label_mode=hard``: two classes, cross-entropy on
  the rows' ``labels``; ``soft``: one logit, BCE on ``soft_labels``. Every other position is
  ignored.
- ORM: ``AutoModelForSequenceClassification`` with one logit (it pools the last non-pad
  token, the tag after the solution: :func:`shared.reward.encode_outcome`), BCE on ``label``.

The guarantees are :mod:`.run`'s: progress, checkpoints with their ``complete`` marker,
resume after a kill, export by one rename, ``result.json`` last. The held-out rows (dev files,
else a seeded share of the problems) are scored before and after training: step-level
accuracy/F1/AUROC (PRM) or solution-level (ORM), on the hard labels.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from services.worker.training import EXIT_NO_DATA, TrainPaths
from services.worker.training.data import IGNORE_INDEX, read_rows
from shared.data_roots import DataRoots, OutsideDataRoots
from shared.files import read_json, write_json
from shared.job_schemas import (
    RewardLabelMode,
    TrainingProgress,
    TrainMethod,
    TrainOrmSpec,
    TrainPrmSpec,
)
from shared.reward import (
    REWARD_CONFIG_FILE,
    classification_metrics,
    encode_outcome,
    encode_steps,
    pick_step_tag,
    probabilities,
)

logger = logging.getLogger("services.worker.training")

RewardSpec = TrainPrmSpec | TrainOrmSpec
METRICS_BEFORE = "metrics_before.json"


@dataclass
class RewardRow:
    input_ids: list[int]
    labels: list[float]
    """Per token: the training target at tag positions (class or probability), -100 elsewhere
    (PRM); one value (ORM)."""
    hard: list[bool]
    """The hard labels of the tags (metrics)."""


def problem_key(row: dict[str, Any]) -> str:
    """Rows of one problem share a key (``id`` is ``<problem>:<solution>``; else the prompt)."""
    rid = row.get("id")
    if isinstance(rid, str) and ":" in rid:
        return rid.rsplit(":", 1)[0]
    return str(row.get("prompt", ""))


def split_by_problem(
    rows: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out ``fraction`` of the problems (seeded; at least one, never all): no problem has
    solutions on both sides, so held-out metrics do not reward memorized questions."""
    keys = sorted({problem_key(r) for r in rows})
    if fraction <= 0 or len(keys) < 2:
        return rows, []
    random.Random(seed).shuffle(keys)
    n_dev = min(len(keys) - 1, max(1, round(len(keys) * fraction)))
    dev_keys = set(keys[:n_dev])
    return (
        [r for r in rows if problem_key(r) not in dev_keys],
        [r for r in rows if problem_key(r) in dev_keys],
    )


class RewardEncoder:
    """Rows -> :class:`RewardRow` for one tokenizer, tag and length limit; counts what it drops
    (``bad_row``, ``no_steps``, ``too_long``) and truncates (steps past ``max_length``)."""

    def __init__(self, spec: RewardSpec, tokenizer: Any, tag_id: int, max_length: int) -> None:
        self.prm = isinstance(spec, TrainPrmSpec)
        self.soft = self.prm and spec.label_mode is RewardLabelMode.soft  # type: ignore[union-attr]
        self.tokenizer = tokenizer
        self.tag_id = tag_id
        self.max_length = max_length

    def encode(self, row: dict[str, Any], dropped: Counter[str]) -> tuple[RewardRow | None, bool]:
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            dropped["bad_row"] += 1
            return None, False
        if not self.prm:
            completion, label = row.get("completion"), row.get("label")
            if not isinstance(completion, str) or not isinstance(label, bool):
                dropped["bad_row"] += 1
                return None, False
            enc = encode_outcome(self.tokenizer, prompt, completion, self.tag_id)
            if len(enc.input_ids) > self.max_length:
                dropped["too_long"] += 1
                return None, False
            return RewardRow(enc.input_ids, [float(label)], [label]), False
        steps, labels = row.get("completions"), row.get("labels")
        soft = row.get("soft_labels") if self.soft else labels
        if (
            not isinstance(steps, list)
            or not isinstance(labels, list)
            or not isinstance(soft, list)
            or not (len(steps) == len(labels) == len(soft))
            or not all(isinstance(s, str) for s in steps)
        ):
            dropped["bad_row"] += 1
            return None, False
        if not steps:
            dropped["no_steps"] += 1
            return None, False
        enc = encode_steps(self.tokenizer, prompt, steps, self.tag_id)
        keep = sum(1 for end in enc.step_ends if end <= self.max_length)
        if keep == 0:
            dropped["too_long"] += 1
            return None, False
        ids = enc.input_ids[: enc.step_ends[keep - 1]]
        targets = [float(IGNORE_INDEX)] * len(ids)
        for pos, value in zip(enc.tag_positions[:keep], soft[:keep], strict=True):
            targets[pos] = float(value)
        return RewardRow(ids, targets, [bool(v) for v in labels[:keep]]), keep < len(steps)

    def encode_all(self, rows: list[dict[str, Any]]) -> tuple[list[RewardRow], dict[str, Any]]:
        out: list[RewardRow] = []
        dropped: Counter[str] = Counter()
        truncated = 0
        for row in rows:
            enc, cut = self.encode(row, dropped)
            if enc is not None:
                out.append(enc)
                truncated += cut
        labels = [y for r in out for y in r.hard]
        report = {
            "rows": len(rows),
            "kept": len(out),
            "truncated": truncated,
            "dropped": dict(dropped),
            "dropped_total": sum(dropped.values()),
            "labels": len(labels),
            "positive_rate": (sum(labels) / len(labels)) if labels else None,
            "max_tokens": max((len(r.input_ids) for r in out), default=0),
        }
        return out, report


class RewardCollator:
    """Right-pads ids with the pad id and targets with -100 (float: soft labels survive)."""

    def __init__(self, pad_id: int, prm: bool) -> None:
        self.pad_id = pad_id
        self.prm = prm

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids, mask, labels = [], [], []
        for f in features:
            n = len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_id] * (width - n))
            mask.append([1] * n + [0] * (width - n))
            if self.prm:
                labels.append(list(f["labels"]) + [float(IGNORE_INDEX)] * (width - n))
            else:
                labels.append(list(f["labels"]))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.float32),
        }


def reward_loss(logits: Any, labels: Any, *, prm: bool, two_class: bool) -> Any:
    """CE (two classes) or BCE (one logit) at the labelled positions only."""
    import torch.nn.functional as F

    if prm:
        keep = labels != IGNORE_INDEX
        picked = logits[keep]  # (n, C)
        target = labels[keep]
    else:
        picked = logits.reshape(labels.shape[0], -1)
        target = labels.reshape(labels.shape[0], -1)[:, 0]
    if two_class:
        return F.cross_entropy(picked.float(), target.long())
    return F.binary_cross_entropy_with_logits(picked.float().reshape(-1), target.float())


def _trainer_class(prm: bool, two_class: bool) -> Any:
    from transformers import Trainer

    class RewardTrainer(Trainer):
        def compute_loss(
            self,
            model: Any,
            inputs: Any,
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = reward_loss(outputs.logits, labels, prm=prm, two_class=two_class)
            return (loss, outputs) if return_outputs else loss

        def prediction_step(
            self, model: Any, inputs: Any, prediction_loss_only: bool, ignore_keys: Any = None
        ) -> Any:
            import torch

            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss = self.compute_loss(model, dict(inputs))
            return (loss.detach(), None, None)

    return RewardTrainer


def predict(
    model: Any, rows: list[RewardRow], pad_id: int, prm: bool, batch: int = 8
) -> list[float]:
    """P(good) at every labelled tag of the rows (PRM), or per row (ORM), in order."""
    import torch

    collate = RewardCollator(pad_id, prm)
    device = next(model.parameters()).device
    out: list[float] = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            inputs = collate([{"input_ids": r.input_ids, "labels": r.labels} for r in chunk])
            logits = model(
                input_ids=inputs["input_ids"].to(device),
                attention_mask=inputs["attention_mask"].to(device),
            ).logits.float()
            if prm:
                for b in range(len(chunk)):
                    keep = inputs["labels"][b] != IGNORE_INDEX
                    out += [probabilities(v) for v in logits[b][keep.to(device)].tolist()]
            else:
                out += [probabilities(v) for v in logits.reshape(len(chunk), -1).tolist()]
    return out


def evaluate(model: Any, rows: list[RewardRow], pad_id: int, prm: bool) -> dict[str, Any]:
    labels = [y for r in rows for y in r.hard]
    scores = predict(model, rows, pad_id, prm)
    return classification_metrics(scores, labels)


def train_reward(paths: TrainPaths, request: dict[str, Any], spec: RewardSpec) -> int:
    """Run (or resume) a reward model's training; returns the exit status."""
    from services.worker.training.run import (
        _precision,
        _progress_callback,
        last_complete_checkpoint,
        load_tokenizer,
        trainer_arguments,
    )

    prm = isinstance(spec, TrainPrmSpec)
    two_class = prm and spec.label_mode is RewardLabelMode.hard  # type: ignore[union-attr]
    hp = spec.resolved()
    max_length = int(hp["max_length"])
    write_json(paths.progress, TrainingProgress(phase="starting").model_dump(mode="json"))

    base = request["base_model_path"]
    tokenizer = load_tokenizer(base)
    try:
        tag, tag_id = pick_step_tag(tokenizer, spec.step_tag)
    except ValueError as exc:
        write_json(paths.error, {"reason": f"step_tag: {exc}"})
        return EXIT_NO_DATA
    try:
        roots = DataRoots.of(request["data_roots"])
        rows = list(read_rows(request["train_files"], roots))
        if spec.limit is not None:
            rows = rows[: spec.limit]
        dev_raw = list(read_rows(request.get("dev_files") or [], roots))
    except (OutsideDataRoots, OSError) as exc:
        write_json(paths.error, {"reason": f"cannot read the training data: {exc}"})
        return EXIT_NO_DATA
    held_out = False
    if not dev_raw:
        rows, dev_raw = split_by_problem(rows, spec.data.dev_fraction, spec.seed)
        held_out = bool(dev_raw)
    encoder = RewardEncoder(spec, tokenizer, tag_id, max_length)
    train_rows, train_report = encoder.encode_all(rows)
    dev_rows, dev_report = encoder.encode_all(dev_raw)
    report: dict[str, Any] = {
        "train": train_report,
        "dev": dev_report,
        "dev_held_out_from_train": held_out,
        "max_length": max_length,
        "step_tag": tag,
        "step_tag_id": tag_id,
    }
    write_json(paths.data_report, report)
    if not train_rows:
        write_json(
            paths.error,
            {
                "reason": f"no usable training rows: {train_report['rows']} read, dropped "
                f"{train_report['dropped'] or 'none'}",
                "report": report,
            },
        )
        return EXIT_NO_DATA

    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        TrainingArguments,
    )

    device, dtype, bf16 = _precision(spec)
    torch.manual_seed(spec.seed)
    head_kw: dict[str, Any] = (
        {"num_labels": 2}
        if two_class
        else {"num_labels": 1, "problem_type": "multi_label_classification"}
    )
    auto = AutoModelForTokenClassification if prm else AutoModelForSequenceClassification
    model = auto.from_pretrained(base, dtype=dtype, **head_kw)
    model.config.pad_token_id = tokenizer.pad_token_id
    pad_id = int(tokenizer.pad_token_id)
    model.to(device)

    before_path = paths.root / METRICS_BEFORE
    if before_path.is_file():
        before = read_json(before_path)
    else:
        write_json(paths.progress, TrainingProgress(phase="evaluating").model_dump(mode="json"))
        before = evaluate(model, dev_rows, pad_id, prm) if dev_rows else {}
        write_json(before_path, before)

    if spec.method is TrainMethod.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=spec.lora_r,
                lora_alpha=spec.lora_alpha,
                lora_dropout=spec.lora_dropout,
                target_modules=spec.lora_target_modules,
                task_type="TOKEN_CLS" if prm else "SEQ_CLS",
            ),
        )

    def dataset(items: list[RewardRow]) -> Any:
        return Dataset.from_list([{"input_ids": r.input_ids, "labels": r.labels} for r in items])

    has_dev = bool(dev_rows)
    args = TrainingArguments(
        **trainer_arguments(spec, hp, paths, has_dev=has_dev),
        remove_unused_columns=False,
    )
    resume = last_complete_checkpoint(paths.checkpoints)
    resumed_from = int(resume.name.split("-")[1]) if resume else None
    trainer = _trainer_class(prm, two_class)(
        model=model,
        args=args,
        train_dataset=dataset(train_rows),
        eval_dataset=dataset(dev_rows) if has_dev else None,
        data_collator=RewardCollator(pad_id, prm),
        callbacks=[_progress_callback(paths, resumed_from, os.getppid())],
    )
    if resume is not None:
        logger.info("resuming from %s", resume)
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trained = trainer.model
    if spec.method is TrainMethod.lora:
        trained = trained.merge_and_unload()
    after = evaluate(trained, dev_rows, pad_id, prm) if has_dev else {}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics: dict[str, float | None] = {
        "train_loss": float(output.training_loss),
        "first_loss": float(losses[0]) if losses else None,
        "last_loss": float(losses[-1]) if losses else None,
        "steps": float(trainer.state.global_step),
        "epochs": float(trainer.state.epoch or 0.0),
    }
    level = "step" if prm else "solution"
    for when, values in (("before", before), ("after", after)):
        for key in ("accuracy", "f1", "auroc"):
            metrics[f"{level}_{key}_{when}"] = values.get(key)
    metrics["eval_labels"] = float(after.get("n") or 0.0) if has_dev else 0.0
    _export(paths, trained, tokenizer, spec, tag, tag_id)
    progress = read_json(paths.progress)
    write_json(paths.progress, {**progress, "phase": "done"})
    write_json(
        paths.result,
        {
            "metrics": metrics,
            "eval": {"before": before, "after": after},
            "hyperparameters": hp,
            "resumed_from_step": resumed_from,
            "device": device,
            "dtype": "bfloat16" if bf16 else str(dtype).removeprefix("torch."),
            "data": report,
            "reward": reward_config(spec, tag, tag_id),
            "finished_at": time.time(),
        },
    )
    return 0


def reward_config(spec: RewardSpec, tag: str, tag_id: int) -> dict[str, Any]:
    prm = isinstance(spec, TrainPrmSpec)
    return {
        "kind": "prm" if prm else "orm",
        "step_tag": tag,
        "step_tag_id": tag_id,
        "label_mode": spec.label_mode.value if prm else None,  # type: ignore[union-attr]
        "num_labels": 2 if prm and spec.label_mode is RewardLabelMode.hard else 1,  # type: ignore[union-attr]
    }


def _export(
    paths: TrainPaths, model: Any, tokenizer: Any, spec: RewardSpec, tag: str, tag_id: int
) -> None:
    """The model folder with its tokenizer and ``reward.json``; published by one rename."""
    import shutil

    progress = read_json(paths.progress)
    write_json(paths.progress, {**progress, "phase": "exporting"})
    staging = paths.root / f"model.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    config = reward_config(spec, tag, tag_id)
    model.config.step_tag_id = tag_id  # vLLM's STEP pooling reads it from the pooler config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    write_json(staging / REWARD_CONFIG_FILE, config)
    if paths.model.exists():
        shutil.rmtree(paths.model)
    staging.rename(paths.model)
