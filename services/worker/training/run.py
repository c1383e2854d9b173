"""One training run, in its own process: ``python -m services.worker.training STAGE_DIR``.

Reads ``request.json`` (written by the worker), tokenizes the rows (:mod:`.data`: chat rows of
a rationalyst, or TriPosT samples with their token weights), trains with TRL's
``SFTTrainer`` (full fine-tune or LoRA with peft; TriPosT's weighted loss with
:class:`~.weighted.WeightedSFTTrainer`), and writes under the stage folder:

* ``progress.json`` at every log step (the worker relays it to the job API),
  ``log_history.jsonl`` (every logged loss), ``data_report.json`` (rows kept, truncated,
  dropped by reason);
* ``checkpoints/checkpoint-N`` every ``save_steps``; a checkpoint counts only once its
  ``complete`` marker is written, after the trainer saved it whole, so a run killed while
  saving resumes from the previous one;
* ``model/`` (LoRA merged into the base weights, with the tokenizer), published by one rename;
* ``result.json`` last: the metrics. A rerun that finds it does nothing.

It stops by itself when the worker that started it is gone (on Linux the kernel kills it with
the parent; elsewhere a callback notices at the next step), so a killed worker never leaves a
second trainer writing the same folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from services.worker.training import EXIT_NO_DATA, TrainPaths
from services.worker.training.data import RowEncoder, TripostEncoder, read_rows, split_dev
from shared.data_roots import DataRoots, OutsideDataRoots
from shared.files import read_json, write_json
from shared.job_schemas import (
    TrainingProgress,
    TrainMethod,
    TrainOptions,
    TrainOrmSpec,
    TrainPrmSpec,
    TrainRationalystSpec,
    TrainTripostSpec,
)

logger = logging.getLogger("services.worker.training")

COMPLETE_MARKER = "complete"


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint with its ``complete`` marker; incomplete ones are removed."""
    if not folder.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for path in folder.glob("checkpoint-*"):
        try:
            step = int(path.name.split("-", 1)[1])
        except ValueError:
            continue
        if not (path / COMPLETE_MARKER).is_file():
            logger.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
            continue
        if best is None or step > best[0]:
            best = (step, path)
    return best[1] if best else None


TrainSpec = TrainRationalystSpec | TrainTripostSpec


def read_spec(request: dict[str, Any]) -> TrainSpec:
    """The spec of the request, by its kind."""
    raw = request["spec"]
    if raw.get("kind") == "train_tripost":
        return TrainTripostSpec.model_validate(raw)
    return TrainRationalystSpec.model_validate(raw)


def _precision(spec: TrainOptions) -> tuple[str, Any, bool]:
    """The device, the dtype the weights load in, and whether the math runs in bf16.

    ``auto`` follows the model service's rule (bf16 on GPUs and on CPUs with native bf16).
    On a CPU the weights stay float32 and bf16 is autocast math (mixed precision); on a GPU
    they load in the dtype itself."""
    import torch

    from services.model_server.engines.device import pick_device, pick_dtype

    device = pick_device(spec.device)
    dtype = pick_dtype(spec.dtype, device)
    bf16 = dtype == "bfloat16"
    weights = torch.float32 if device == "cpu" else getattr(torch, dtype)
    return device, weights, bf16


def load_tokenizer(base: str) -> Any:
    """The base model's tokenizer, padding with its end-of-text token when it has no pad
    token (SmolLM2's has one; many base models do not)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def trainer_arguments(
    spec: TrainOptions, hp: dict[str, Any], paths: TrainPaths, *, has_dev: bool
) -> dict[str, Any]:
    """The ``TrainingArguments`` every trainer here shares: the resolved hyperparameters
    ``hp``, checkpoints in ``paths`` every ``save_steps`` (a restarted job resumes there),
    evaluation when there is a dev set, the spec's precision, no progress bar (progress goes
    to the job's status) and no reporting to outside services."""
    import torch

    device, dtype, bf16 = _precision(spec)
    return {
        "output_dir": str(paths.checkpoints),
        "num_train_epochs": float(hp["epochs"]),
        "max_steps": int(hp.get("max_steps", -1)),
        "learning_rate": float(hp["learning_rate"]),
        "per_device_train_batch_size": int(hp["batch_size"]),
        "per_device_eval_batch_size": int(hp["batch_size"]),
        "gradient_accumulation_steps": int(hp["gradient_accumulation_steps"]),
        "lr_scheduler_type": str(hp["lr_scheduler"]),
        "warmup_steps": float(hp["warmup_ratio"]),  # below 1: a share of the steps
        "weight_decay": spec.weight_decay,
        "logging_steps": spec.logging_steps,
        "logging_first_step": True,
        "eval_strategy": ("steps" if spec.eval_steps else "epoch") if has_dev else "no",
        "eval_steps": spec.eval_steps,
        "save_strategy": "steps",
        "save_steps": spec.save_steps,
        "save_total_limit": spec.save_total_limit,
        "seed": spec.seed,
        "data_seed": spec.seed,
        "use_cpu": device == "cpu",
        "bf16": bf16,
        "fp16": dtype == torch.float16,
        "gradient_checkpointing": spec.gradient_checkpointing,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def _progress_callback(paths: TrainPaths, resumed_from: int | None, parent: int) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Writes progress.json and log_history.jsonl; marks saved checkpoints complete."""

        def __init__(self) -> None:
            self.state = TrainingProgress(resumed_from_step=resumed_from, phase="training")

        def _publish(self) -> None:
            write_json(paths.progress, self.state.model_dump(mode="json"))

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.state.max_steps = state.max_steps
            self.state.step = state.global_step
            self._publish()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if os.getppid() != parent:  # the worker is gone: stop, leave the checkpoints
                logger.error("the worker that started this run is gone; stopping")
                os._exit(1)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = dict(logs or {})
            self.state.step = state.global_step
            self.state.max_steps = state.max_steps
            self.state.epoch = state.epoch
            if "loss" in logs:
                self.state.loss = float(logs["loss"])
            if "eval_loss" in logs:
                self.state.eval_loss = float(logs["eval_loss"])
            if "learning_rate" in logs:
                self.state.learning_rate = float(logs["learning_rate"])
            with open(paths.log_history, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")
            self._publish()

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            folder = paths.checkpoints / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / COMPLETE_MARKER).write_text(str(time.time()))

    return Progress()


def _encode(
    request: dict[str, Any], spec: TrainSpec, tokenizer: Any, max_length: int
) -> tuple[list[Any], list[Any], dict[str, Any]]:
    roots = DataRoots.of(request["data_roots"])
    rows = list(read_rows(request["train_files"], roots))
    if spec.limit is not None:
        rows = rows[: spec.limit]
    dev_rows = list(read_rows(request.get("dev_files") or [], roots))
    held_out = False
    if not dev_rows:
        rows, dev_rows = split_dev(rows, spec.data.dev_fraction, spec.seed)
        held_out = bool(dev_rows)
    encoder: RowEncoder | TripostEncoder
    if isinstance(spec, TrainTripostSpec):
        encoder = TripostEncoder(tokenizer, max_length, spec.feedback_weight, spec.weighted_kinds)
    else:
        encoder = RowEncoder(tokenizer, max_length)
    train, train_report = encoder.encode_all(rows)
    dev, dev_report = encoder.encode_all(dev_rows)
    report: dict[str, Any] = {
        "train": train_report.to_json(),
        "dev": dev_report.to_json(),
        "dev_held_out_from_train": held_out,
        "max_length": max_length,
        "expects_bos": encoder.expects_bos,
        "bos_token_id": encoder.bos,
    }
    if isinstance(spec, TrainTripostSpec):
        report["feedback_weight"] = spec.feedback_weight
        report["weighted_kinds"] = list(spec.weighted_kinds)
    return train, dev, report


def train(paths: TrainPaths) -> int:
    """Run (or resume) the training the request describes; returns the exit status."""
    if paths.result.is_file():
        logger.info("already trained: %s", paths.result)
        return 0
    request = read_json(paths.request)
    if request["spec"].get("kind") in ("train_prm", "train_orm"):
        from services.worker.training.reward import RewardSpec, train_reward

        reward_spec: RewardSpec = (
            TrainPrmSpec if request["spec"]["kind"] == "train_prm" else TrainOrmSpec
        ).model_validate(request["spec"])
        return train_reward(paths, request, reward_spec)
    spec = read_spec(request)
    weighted = isinstance(spec, TrainTripostSpec)
    hp = spec.resolved()
    write_json(paths.progress, TrainingProgress(phase="starting").model_dump(mode="json"))

    from transformers import AutoModelForCausalLM

    base = request["base_model_path"]
    tokenizer = load_tokenizer(base)
    try:
        train_rows, dev_rows, report = _encode(request, spec, tokenizer, int(hp["max_length"]))
    except (OutsideDataRoots, OSError) as exc:  # the job fails at once: retrying cannot help
        write_json(paths.error, {"reason": f"cannot read the training data: {exc}"})
        return EXIT_NO_DATA
    write_json(paths.data_report, report)
    if not train_rows:
        dropped = report["train"]["dropped"]
        write_json(
            paths.error,
            {
                "reason": f"no usable training rows: {report['train']['rows']} read, "
                f"dropped {dropped or 'none'}",
                "report": report,
            },
        )
        return EXIT_NO_DATA

    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    device, dtype, bf16 = _precision(spec)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    peft_config = None
    if spec.method is TrainMethod.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=spec.lora_r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=spec.lora_target_modules,
            task_type="CAUSAL_LM",
        )

    def dataset(rows: list[Any]) -> Any:
        if weighted:
            return Dataset.from_list(
                [
                    {"input_ids": r.input_ids, "labels": r.labels, "token_weights": r.token_weights}
                    for r in rows
                ]
            )
        return Dataset.from_list([{"input_ids": r.input_ids, "labels": r.labels} for r in rows])

    has_dev = bool(dev_rows)
    args = SFTConfig(
        **trainer_arguments(spec, hp, paths, has_dev=has_dev),
        max_length=int(hp["max_length"]),
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=not weighted,  # the weights reach the collator and the loss
    )
    resume = last_complete_checkpoint(paths.checkpoints)
    resumed_from = int(resume.name.split("-")[1]) if resume else None
    trainer_class: Any = SFTTrainer
    extra: dict[str, Any] = {}
    if weighted:
        from services.worker.training.weighted import WeightedCollator, WeightedSFTTrainer

        trainer_class = WeightedSFTTrainer
        extra["data_collator"] = WeightedCollator(int(tokenizer.pad_token_id))
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=dataset(train_rows),
        eval_dataset=dataset(dev_rows) if has_dev else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_progress_callback(paths, resumed_from, os.getppid())],
        **extra,
    )
    metrics: dict[str, float | None] = {}
    if has_dev and resume is None:
        metrics["eval_loss_before"] = float(trainer.evaluate()["eval_loss"])
    elif has_dev:
        metrics["eval_loss_before"] = _first_eval_loss(paths)
    if resume is not None:
        logger.info("resuming from %s", resume)
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics["train_loss"] = float(output.training_loss)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics["first_loss"] = float(losses[0]) if losses else None
    metrics["last_loss"] = float(losses[-1]) if losses else None
    if has_dev:
        metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
    metrics["steps"] = float(trainer.state.global_step)
    metrics["epochs"] = float(trainer.state.epoch or 0.0)
    _export(paths, trainer, tokenizer, spec.method)
    progress = read_json(paths.progress)
    write_json(paths.progress, {**progress, "phase": "done", "eval_loss": metrics.get("eval_loss")})
    write_json(
        paths.result,
        {
            "metrics": metrics,
            "hyperparameters": hp,
            "resumed_from_step": resumed_from,
            "device": device,
            "dtype": "bfloat16" if bf16 else str(dtype).removeprefix("torch."),
            "data": report,
            "finished_at": time.time(),
        },
    )
    return 0


def _first_eval_loss(paths: TrainPaths) -> float | None:
    """The eval loss before training, as the first run of a resumed job logged it."""
    if not paths.log_history.is_file():
        return None
    for line in paths.log_history.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("step") == 0 and "eval_loss" in entry:
            value = float(entry["eval_loss"])
            return value if math.isfinite(value) else None
    return None


def _export(paths: TrainPaths, trainer: Any, tokenizer: Any, method: TrainMethod) -> None:
    """Save the final model (LoRA merged) and its tokenizer; publish the folder by rename."""
    progress = read_json(paths.progress)
    write_json(paths.progress, {**progress, "phase": "exporting"})
    model = trainer.model
    if method is TrainMethod.lora:
        model = model.merge_and_unload()
    staging = paths.root / f"model.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if paths.model.exists():
        shutil.rmtree(paths.model)
    staging.rename(paths.model)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m services.worker.training STAGE_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=os.environ.get("WORKER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return train(TrainPaths(Path(argv[0])))
