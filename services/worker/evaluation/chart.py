"""PNG charts of a run: accuracy by heuristic per task, with 95% intervals (matplotlib, Agg)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)


class _Cell(Protocol):
    task: str
    heuristic: str
    n: int
    accuracy: float | None
    ci_low: float
    ci_high: float


def accuracy_chart(
    cells: Sequence[_Cell],
    path: Path,
    *,
    title: str,
    chance: float | None = None,
) -> Path | None:
    """Grouped bars (one group per task, one bar per heuristic) with interval whiskers and,
    when given, a dashed chance line. None (and a warning) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install '.[eval]'); no chart written")
        return None
    tasks = list(dict.fromkeys(c.task for c in cells))
    heuristics = list(dict.fromkeys(c.heuristic for c in cells))
    by_key = {(c.task, c.heuristic): c for c in cells}
    width = 0.8 / max(1, len(heuristics))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(tasks) * max(2, len(heuristics))), 4.2))
    for j, heuristic in enumerate(heuristics):
        drawn = [
            (i, by_key[(task, heuristic)])
            for i, task in enumerate(tasks)
            if (task, heuristic) in by_key and by_key[(task, heuristic)].accuracy is not None
        ]
        xs = [i + (j - (len(heuristics) - 1) / 2) * width for i, _ in drawn]
        ys = [float(c.accuracy or 0.0) for _, c in drawn]
        errors = [  # clamped: rounding can put an interval end a hair inside its point
            [max(0.0, y - c.ci_low) for y, (_, c) in zip(ys, drawn, strict=True)],
            [max(0.0, c.ci_high - y) for y, (_, c) in zip(ys, drawn, strict=True)],
        ]
        ax.bar(xs, ys, width * 0.95, yerr=errors, capsize=3, label=heuristic)
        for x, y, (_, cell) in zip(xs, ys, drawn, strict=True):
            ax.annotate(
                f"{100 * y:.0f}%", (x, cell.ci_high + 0.01), ha="center", va="bottom", fontsize=7
            )
    if chance is not None:
        ax.axhline(chance, linestyle="--", color="grey", linewidth=1, label=f"chance {chance:.2f}")
    labels = []
    for task in tasks:
        ns = sorted({c.n for c in cells if c.task == task})
        n_text = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"
        labels.append(f"{task}\n({n_text})")
    ax.set_xticks(range(len(tasks)))
    tilt = len(tasks) > 3
    ax.set_xticklabels(labels, rotation=15 if tilt else 0, ha="right" if tilt else "center")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(
        fontsize=8, loc="upper center", ncols=min(5, len(heuristics) + (chance is not None)),
        framealpha=0.9,
    )  # fmt: skip
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


class _TokensCell(_Cell, Protocol):
    mean_budget_tokens: float | None


def _series(method: str) -> tuple[str, int | None]:
    """``strategy/heuristic@budget`` -> (``strategy/heuristic``, budget)."""
    name, _, budget = method.partition("@")
    return name, int(budget) if budget.isdigit() else None


def tokens_chart(cells: Sequence[_TokensCell], path: Path, *, title: str) -> Path | None:
    """Accuracy against mean tokens spent, one line per task x strategy/heuristic through its
    budgets (the search-and-learn plot), Wilson whiskers. None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install '.[eval]'); no chart written")
        return None
    tasks = list(dict.fromkeys(c.task for c in cells))
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(max(6.0, 5.0 * len(tasks)), 4.2), squeeze=False
    )
    for ax, task in zip(axes[0], tasks, strict=True):
        lines: dict[str, list[_TokensCell]] = {}
        for c in cells:
            if c.task == task and c.accuracy is not None and c.mean_budget_tokens is not None:
                lines.setdefault(_series(c.heuristic)[0], []).append(c)
        for name, points in lines.items():
            points.sort(key=lambda c: float(c.mean_budget_tokens or 0.0))
            xs = [float(c.mean_budget_tokens or 0.0) for c in points]
            ys = [float(c.accuracy or 0.0) for c in points]
            err = [
                [max(0.0, y - c.ci_low) for y, c in zip(ys, points, strict=True)],
                [max(0.0, c.ci_high - y) for y, c in zip(ys, points, strict=True)],
            ]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
        ns = sorted({c.n for c in cells if c.task == task})
        ax.set_title(f"{task} (n={ns[-1] if ns else 0})", fontsize=9)
        ax.set_xlabel("tokens per question (generated + scored)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
