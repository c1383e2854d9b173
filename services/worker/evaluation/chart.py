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
