"""Evaluation of step-selection heuristics through the gateway.

* :func:`run_evaluation` (:class:`EvalSpec`): accuracy per task x heuristic via /v1/reason;
* :func:`run_selection` (:class:`SelectionSpec`): gold-step ranking via /v1/select.

Both are plain async functions of a spec model, resumable, writing JSONL, Markdown and PNG.
"""

from services.worker.evaluation.runner import EvalResult, run_evaluation
from services.worker.evaluation.selection import SelectionResult, run_selection
from services.worker.evaluation.spec import EvalSpec, SelectionSpec

__all__ = [
    "EvalResult",
    "EvalSpec",
    "SelectionResult",
    "SelectionSpec",
    "run_evaluation",
    "run_selection",
]
