"""Evaluation of step-selection heuristics through the gateway.

* :func:`run_evaluation` (:class:`EvalSpec`): accuracy per task x heuristic via /v1/reason;
* :func:`run_selection` (:class:`SelectionSpec`): gold-step ranking via /v1/select;
* :func:`run_compare` (:class:`CompareSpec`): a trained rationalyst against its base model on
  the same step-selection items, in processes it starts and stops itself.

Both are plain async functions of a spec model, resumable, writing JSONL, Markdown and PNG.
"""

from services.worker.evaluation.compare import CompareResult, run_compare
from services.worker.evaluation.runner import EvalResult, run_evaluation
from services.worker.evaluation.selection import SelectionResult, run_selection
from services.worker.evaluation.spec import CompareSpec, EvalSpec, SelectionSpec

__all__ = [
    "CompareResult",
    "CompareSpec",
    "EvalResult",
    "EvalSpec",
    "SelectionResult",
    "SelectionSpec",
    "run_compare",
    "run_evaluation",
    "run_selection",
]
