"""Markdown reports of an accuracy run, a step-selection run and a base-vs-trained comparison."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from services.worker.evaluation.spec import CompareSpec, EvalSpec, SelectionSpec
from services.worker.evaluation.stats import (
    CellStats,
    CompareCellStats,
    SelectionCellStats,
    SelfImproveCellStats,
)

BASELINES = ("greedy", "random")
"""Heuristics other rows are compared with, the first present one."""


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _ci(low: float, high: float, n: int) -> str:
    return "–" if n == 0 else f"[{100 * low:.1f}, {100 * high:.1f}]"


def _num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _generated(at: dt.datetime, label: str | None) -> str:
    text = f"Generated {at:%Y-%m-%d %H:%M} UTC."
    if label:
        text += " " + label.strip() + ("" if label.strip().endswith((".", "!", "?")) else ".")
    return text


def budget(tokens: int | None) -> str:
    return "gateway default" if tokens is None else str(tokens)


def _settings(rows: Sequence[tuple[str, str]]) -> str:
    return _table(["Setting", "Value"], [[k, v] for k, v in rows])


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _overlap(
    a: CellStats | SelectionCellStats | SelfImproveCellStats,
    b: CellStats | SelectionCellStats | SelfImproveCellStats,
) -> bool:
    return a.ci_low <= b.ci_high and b.ci_low <= a.ci_high


def _findings(cells: Sequence[CellStats | SelectionCellStats]) -> list[str]:
    out = []
    for task in dict.fromkeys(c.task for c in cells):
        row = [c for c in cells if c.task == task and c.accuracy is not None]
        if not row:
            out.append(f"- **{task}**: no answered examples.")
            continue
        best = max(c.accuracy or 0.0 for c in row)
        leaders = [c for c in row if c.accuracy == best]
        worst = min(row, key=lambda c: c.accuracy or 0.0)
        names = ", ".join(f"`{c.heuristic}`" for c in leaders)
        if len(row) == 1:
            out.append(f"- **{task}**: `{row[0].heuristic}` {_pct(best)}.")
        elif len(leaders) == len(row):
            out.append(f"- **{task}**: all heuristics tie at {_pct(best)}.")
        elif all(_overlap(leaders[0], c) for c in row):
            out.append(
                f"- **{task}**: best {names} ({_pct(best)}), but every interval overlaps: "
                "the differences are not significant at this sample size."
            )
        else:
            out.append(
                f"- **{task}**: best {names} ({_pct(best)}); its interval excludes "
                f"`{worst.heuristic}` ({_pct(worst.accuracy)})."
            )
    return out


def _compute_section(spec: EvalSpec, cells: Sequence[CellStats], chart: str | None) -> list[str]:
    """Accuracy against tokens spent per strategy/heuristic and budget."""
    budgets = ", ".join(str(b) for b in spec.budgets) or "none"
    parts = [
        "## Accuracy vs tokens",
        "",
        f"Strategies {', '.join(s.value for s in spec.strategies)}; budgets (max_tokens_budget, "
        f"generated + scored tokens per question): {budgets}; beam {spec.n_beams} paths x "
        f"{spec.beam_width} proposals; {spec.n_solutions} solutions for best_of_n/vote/"
        f"weighted_vote; aggregation `{spec.aggregation.value}`.",
        "",
    ]
    header = ["Task", "Method", "n", "Accuracy", "95% CI", "Tokens spent", "Budget reached"]
    rows = [
        [
            c.task,
            f"`{c.heuristic}`",
            str(c.n),
            _pct(c.accuracy),
            _ci(c.ci_low, c.ci_high, c.n),
            _num(c.mean_budget_tokens, 0),
            str(c.budget_reached),
        ]
        for c in cells
    ]
    parts += [_table(header, rows), ""]
    if chart:
        parts += [f"![Accuracy vs tokens per strategy]({chart})", ""]
    return parts


def eval_report(
    spec: EvalSpec,
    cells: Sequence[CellStats],
    records: Sequence[dict[str, Any]],
    *,
    chart: str | None,
    generated_at: dt.datetime,
    tokens_chart: str | None = None,
) -> str:
    """The Markdown report of an accuracy run."""
    heuristics = [h.value for h in spec.heuristics]
    baseline = next((b for b in BASELINES if b in heuristics), None)
    by_key = {(c.task, c.heuristic): c for c in cells}
    demos = {"task": f"the task's own ({spec.shots} per request)", "default": "gateway built-in"}
    parts = [
        "# Evaluation report",
        "",
        _generated(generated_at, spec.label),
        "",
        _settings(
            [
                ("Gateway", spec.gateway_url),
                ("Tasks", ", ".join(dict.fromkeys(c.task for c in cells))),
                ("Heuristics", ", ".join(heuristics)),
                ("Examples per task", f"{spec.n} (seed {spec.seed})"),
                ("Candidates per step", str(spec.n_candidates)),
                ("Max steps", str(spec.max_steps)),
                (
                    "Tokens per step / rationale",
                    f"{budget(spec.max_step_tokens)} / {budget(spec.max_rationale_tokens)}",
                ),
                ("Few-shot demos", demos.get(spec.few_shot, "none")),
                (
                    "Temperature",
                    "gateway default" if spec.temperature is None else str(spec.temperature),
                ),
                (
                    "Deadline per request",
                    "none" if spec.deadline_s is None else f"{spec.deadline_s:g} s",
                ),
                ("Settings hash", f"`{spec.config_id}` (record keys in results.jsonl)"),
            ]
        ),
        "",
        "## Accuracy",
        "",
    ]
    header = ["Task", "Heuristic", "n", "Accuracy", "95% CI"]
    if baseline:
        header.append(f"Δ vs {baseline}")
    header += ["Unparsed", "Finished", "Steps", "Generated", "Tokens", "Latency (s)", "Errors"]
    rows = []
    for c in cells:
        row = [
            c.task,
            f"`{c.heuristic}`",
            str(c.n),
            _pct(c.accuracy),
            _ci(c.ci_low, c.ci_high, c.n),
        ]
        if baseline:
            base = by_key.get((c.task, baseline))
            delta = (
                None
                if base is None or base.accuracy is None or c.accuracy is None
                else 100 * (c.accuracy - base.accuracy)
            )
            row.append("–" if delta is None or c.heuristic == baseline else f"{delta:+.1f}")
        row += [
            _pct(c.unparsed_rate),
            _pct(c.finished_rate),
            _num(c.mean_steps),
            _num(c.mean_generated_tokens, 0),
            _num(c.mean_tokens, 0),
            _num(c.mean_latency_s),
            str(c.errors),
        ]
        rows.append(row)
    parts += [_table(header, rows), ""]
    if chart:
        parts += [f"![Accuracy by heuristic per task]({chart})", ""]
    if spec.compares_compute:
        parts += _compute_section(spec, cells, tokens_chart)
    parts += ["## Findings", "", *_findings(cells), ""]
    fallbacks = sum(c.fallbacks for c in cells)
    errors = sum(c.errors for c in cells)
    if fallbacks or errors:
        parts += [
            f"Degradations: {fallbacks} fallback(s) to another heuristic (a model service was "
            f"down or slow), {errors} failed request(s) (left out; rerun to retry).",
            "",
        ]
    parts += ["## Examples", ""]
    for task in dict.fromkeys(c.task for c in cells):
        sample = next((r for r in records if r["task"] == task and not r.get("error")), None)
        if sample is None:
            continue
        verdict = (
            "correct" if sample["correct"] else ("unparsed" if not sample["parsed"] else "wrong")
        )
        parts += [
            f"**{task}** (`{sample.get('method', sample['heuristic'])}`, item "
            f"{sample['item_id']}): {verdict}; gold "
            f"{_short(str(sample['gold']), 120)}, read {sample.get('predicted')!s}.",
            "",
            "> " + _short(sample["question"], 400).replace("\n", " "),
            "",
        ]
        parts += [f"{i + 1}. {_short(step, 240)}" for i, step in enumerate(sample.get("steps", []))]
        parts.append("")
    parts += [
        "## How to read this report",
        "",
        "- **Accuracy** = correct / answered examples of the cell. An answer that cannot be read "
        '(no "The answer is ..." statement, or one that does not parse for the task) counts '
        "as wrong; failed requests (**Errors**) are left out and retried by the next run.",
        "- **95% CI** is the Wilson score interval. With n examples per cell, differences "
        "smaller than the intervals are not evidence of a better heuristic.",
        "- **Unparsed** is the share of answered examples whose final answer could not be "
        "read; **Finished** the share that stated an answer within the step budget.",
        "- **Steps**, **Generated** (tokens written by the rationalyst and the agent), "
        "**Tokens** (prompt + generated tokens over rationalyst, agent and scorer, as the "
        "services report them: the prompts, few-shot demos read again at every call, dominate) "
        "and **Latency** (client wall time per request) are means over answered examples.",
        "- Every example, with the full step trace (rationales, candidates, scores, chosen "
        "index, timings), is a line of `results.jsonl`; `summary.json` has these numbers.",
        "",
    ]
    return "\n".join(parts)


def selection_report(
    spec: SelectionSpec,
    cells: Sequence[SelectionCellStats],
    *,
    chart: str | None,
    generated_at: dt.datetime,
) -> str:
    """The Markdown report of a step-selection run."""
    heuristics = [h.value for h in spec.heuristics]
    parts = [
        "# Step-selection report",
        "",
        _generated(generated_at, spec.label),
        "",
        "Each item is a gold trajectory prefix with its gold next step hidden among "
        f"{spec.k - 1} corrupted alternatives (a number changed, another step of the solution "
        "swapped in, words reordered; a step of another problem when those run out). A "
        "heuristic is right when POST /v1/select ranks the gold step first.",
        "",
        _settings(
            [
                ("Gateway", spec.gateway_url),
                ("Tasks", ", ".join(dict.fromkeys(c.task for c in cells))),
                ("Heuristics", ", ".join(heuristics)),
                ("Items per task", f"{spec.n} (seed {spec.seed})"),
                ("Candidates per item", f"{spec.k} (chance {100 / spec.k:.1f}%)"),
                ("Few-shot demos", spec.few_shot),
                ("Settings hash", f"`{spec.config_id}`"),
            ]
        ),
        "",
        "## Top-1 accuracy",
        "",
    ]
    rows = []
    for c in cells:
        kinds = ", ".join(f"{k} {v}" for k, v in c.chosen_kinds.items()) or "–"
        rows.append(
            [
                c.task, f"`{c.heuristic}`", str(c.n), _pct(c.accuracy),
                _ci(c.ci_low, c.ci_high, c.n), _pct(c.chance), _num(c.mean_gold_rank, 2),
                kinds, _num(c.mean_latency_s), str(c.errors),
            ]
        )  # fmt: skip
    header = [
        "Task", "Heuristic", "n", "Top-1", "95% CI", "Chance", "Gold rank", "Chosen", "Latency (s)",
        "Errors",
    ]  # fmt: skip
    parts += [_table(header, rows), ""]
    if chart:
        parts += [f"![Step-selection accuracy per task]({chart})", ""]
    parts += ["## Findings", "", *_findings(cells)]
    for c in cells:
        if c.n and c.ci_low > c.chance:
            parts.append(f"- `{c.heuristic}` on {c.task} is above chance (interval excludes it).")
    parts += [
        "",
        "## How to read this report",
        "",
        "- **Top-1** = share of items where the gold step got the best score (ties go to the "
        "first candidate; candidate order is shuffled per item). **Chance** = 1/k.",
        "- **Gold rank**: mean rank of the gold step by score (1 = best; scored heuristics).",
        "- **Chosen** counts which candidate kind was picked: `gold`, `number`, `swap`, "
        "`reorder` or `other`.",
        "- Per-item records with scores and rationales are in `results.jsonl`.",
        "",
    ]
    return "\n".join(parts)


def _points(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"


def compare_verdict(cell: CompareCellStats) -> str:
    """One sentence on trained - base for a cell."""
    d = cell.difference
    if d.diff is None:
        return "no item was answered by both runs"
    ci = f"95% CI [{_points(d.ci_low)}, {_points(d.ci_high)}] points"
    counts = (
        f"trained alone right on {d.trained_only} item(s), base alone on {d.base_only}; "
        f"exact McNemar p = {d.p_value:.3g}"
    )
    if d.ci_low > 0:
        verdict = "the trained rationalyst is better"
    elif d.ci_high < 0:
        verdict = "the trained rationalyst is worse"
    else:
        verdict = "no significant difference"
    return f"{_points(d.diff)} points, {ci}: {verdict} ({counts})"


def compare_report(
    spec: CompareSpec,
    cells: Sequence[CompareCellStats],
    overall: CompareCellStats,
    *,
    models: Mapping[str, str],
    services: Mapping[str, str],
    generated_at: dt.datetime,
) -> str:
    """The Markdown report of a comparison (``rationalyst eval compare``)."""
    parts = [
        "# Rationalyst comparison: trained vs base",
        "",
        _generated(generated_at, None),
        "",
        "The same step-selection items (a gold next step hidden among "
        f"{spec.k - 1} corrupted ones; heuristic `rationalyst`: the rationalyst writes a "
        "rationale, the scorer ranks the candidates given it) were run twice, once with each "
        "model as the rationalyst. Agent and scorer are the same in both runs.",
        "",
        _settings(
            [
                ("Base rationalyst", models["base"]),
                ("Trained rationalyst", models["trained"]),
                ("Scorer", services["scorer"]),
                ("Agent", services["agent"]),
                ("Tasks", ", ".join(spec.tasks)),
                ("Items per task", f"{spec.n} (seed {spec.seed})"),
                ("Candidates per item", f"{spec.k} (chance {100 / spec.k:.1f}%)"),
                ("Few-shot demos", spec.few_shot),
                ("Difference interval", overall.difference.method),
            ]
        ),
        "",
        "## Top-1 accuracy on the paired items",
        "",
    ]
    shown = [*cells, overall] if len(cells) > 1 else list(cells)
    rows = []
    for c in shown:
        d = c.difference
        rows.append(
            [
                "**all**" if c is overall else c.task, str(c.n),
                _pct(c.base_accuracy), _ci(c.base_ci_low, c.base_ci_high, c.n),
                _pct(c.trained_accuracy), _ci(c.trained_ci_low, c.trained_ci_high, c.n),
                _points(d.diff), "–" if d.diff is None else f"[{_points(d.ci_low)}, "
                f"{_points(d.ci_high)}]", f"{d.trained_only} / {d.base_only}",
                f"{d.p_value:.3g}", str(c.unpaired),
            ]
        )  # fmt: skip
    header = [
        "Task", "n", "Base", "95% CI", "Trained", "95% CI", "Δ (points)", "Δ 95% CI",
        "Trained-only / base-only", "McNemar p", "Unpaired",
    ]  # fmt: skip
    parts += [_table(header, rows), "", "## Findings", ""]
    parts += [
        f"- **{'all tasks' if c is overall else c.task}**: {compare_verdict(c)}." for c in shown
    ]
    if overall.unpaired:
        parts.append(
            f"- {overall.unpaired} item(s) are left out: a run failed on them or fell back to "
            "another heuristic. Run the same command again to retry failed requests."
        )
    parts += [
        "",
        "## How to read this report",
        "",
        "- **Base** / **Trained**: share of items whose gold step the run ranked first, on the "
        "items both runs answered with the `rationalyst` heuristic, with 95% Wilson intervals.",
        "- **Δ** = trained − base in percentage points. The items are paired (same item, two "
        "models), so its interval is a paired bootstrap over items: the per-item differences "
        "are resampled, which is usually narrower than comparing the two Wilson intervals. "
        "With few items, or when every item agrees, the bootstrap interval can be narrow or "
        "of zero width; the exact McNemar p-value, computed from the items only one model got "
        "right, is the sturdier test then.",
        "- Each run's own report, per-item records (scores, rationales) and summary are in "
        "`base/` and `trained/`; the started processes' logs in `logs/`; these numbers in "
        "`compare.json`.",
        "",
    ]
    return "\n".join(parts)


def self_improve_report(
    title: str,
    cells: Sequence[SelfImproveCellStats],
    *,
    settings: Sequence[tuple[str, str]],
    chart: str | None,
    generated_at: dt.datetime,
    notes: Sequence[str] = (),
) -> str:
    """The Markdown report of self-improvement runs: per task and model, the first attempt's
    and the final answer's accuracy with their intervals."""
    parts = [f"# {title}", "", _generated(generated_at, None), "", _settings(settings), ""]
    parts += ["## Accuracy", ""]
    header = [
        "Task", "Model", "n", "First attempt", "95% CI", "Final", "95% CI", "Wrong→right",
        "Right→wrong", "Rounds", "Said correct", "Unparsed", "Errors",
    ]  # fmt: skip
    rows = [
        [
            c.task, f"`{c.heuristic}`", str(c.n), _pct(c.first_accuracy),
            _ci(c.first_ci_low, c.first_ci_high, c.n), _pct(c.accuracy),
            _ci(c.ci_low, c.ci_high, c.n), str(c.improved), str(c.worsened),
            _num(c.mean_rounds), str(c.said_correct), str(c.unparsed), str(c.errors),
        ]
        for c in cells
    ]  # fmt: skip
    parts += [_table(header, rows), ""]
    if chart:
        parts += [f"![Final accuracy per task and model]({chart})", ""]
    parts += ["## Findings", ""]
    for task in dict.fromkeys(c.task for c in cells):
        row = [c for c in cells if c.task == task and c.accuracy is not None]
        if not row:
            parts.append(f"- **{task}**: no answered questions.")
            continue
        first, best = row[0], max(row, key=lambda c: c.accuracy or 0.0)
        if len(row) == 1:
            parts.append(f"- **{task}**: `{first.heuristic}` {_pct(first.accuracy)}.")
        elif best.accuracy == first.accuracy:
            parts.append(
                f"- **{task}**: no model beats `{first.heuristic}` ({_pct(first.accuracy)})."
            )
        elif _overlap(first, best):
            parts.append(
                f"- **{task}**: best `{best.heuristic}` ({_pct(best.accuracy)}) vs "
                f"`{first.heuristic}` ({_pct(first.accuracy)}), but the intervals overlap: "
                "not significant at this sample size."
            )
        else:
            parts.append(
                f"- **{task}**: `{best.heuristic}` ({_pct(best.accuracy)}) is above "
                f"`{first.heuristic}` ({_pct(first.accuracy)}); the intervals do not overlap."
            )
    parts += [*notes, ""] if notes else []
    parts += [
        "",
        "## How to read this report",
        "",
        "- **First attempt**: the model's first answer; **Final**: its answer when its own "
        "feedback said the final response is correct, or after the most rounds. Both are "
        "checked against the gold answer (exact match of the stated answer).",
        "- **95% CI**: Wilson score intervals; differences inside them are not evidence.",
        "- **Wrong→right** / **Right→wrong**: questions self-improvement fixed / broke. "
        "**Rounds**: mean answers written per question. **Said correct**: questions whose last "
        "feedback said the final response is correct. **Unparsed**: final answers stating no "
        "readable answer.",
        "- Each question, with every round (answer, feedback, update), is a line of the "
        "stages' `output.jsonl`.",
        "",
    ]
    return "\n".join(parts)
