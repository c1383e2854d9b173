"""Training a rationalyst: the ``train_rationalyst`` job's one shard runs
:mod:`services.worker.training.run` in a child process (TRL's SFTTrainer), which writes its
progress, checkpoints and the exported model under the job's stage folder
(:class:`TrainPaths`). The worker relays the progress to the job API and, once the model is
exported, registers it (:mod:`shared.model_registry`).

Rows are tokenized here (:mod:`.data`), not by TRL, so that the two defects of the original
recipe cannot recur and are counted: a sequence carries exactly one BOS, and truncation never
removes every trained token (such rows are dropped and reported).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXIT_NO_DATA = 3
"""Exit status of the child when no row is usable or the data cannot be read (outside the data
roots, missing): the job fails at once, without retries."""


@dataclass(frozen=True)
class TrainPaths:
    """Files of one training stage (``<artifacts>/<job id>/train_rationalyst/``)."""

    root: Path

    @property
    def request(self) -> Path:
        """What the child trains: the spec, the data files, the base model's folder."""
        return self.root / "request.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        """The exported model (LoRA merged); appears whole, by one rename."""
        return self.root / "model"

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    @property
    def log_history(self) -> Path:
        return self.root / "log_history.jsonl"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def result(self) -> Path:
        """Written last by the child: metrics of the finished run."""
        return self.root / "result.json"

    @property
    def error(self) -> Path:
        return self.root / "error.json"

    @property
    def log(self) -> Path:
        return self.root / "train.log"
