"""The label rule of ``prm_labels``: step labels of one solution from Monte-Carlo estimates.

``MC(i)`` is the share of rollouts from the prefix of the first ``i`` steps (step ``i``
INCLUDED: the prefix ends with the step being labelled) that reach the gold answer. Step ``i``
(1-based) gets the hard label ``MC(i) > 0`` (some completion from it still reaches the answer)
and the soft label ``MC(i)``. The prefix of a finished solution's last step is the solution
itself: its rollouts all state the solution's answer, so ``MC(M)`` is 1 or 0 without any
rollout.

Methods (:class:`~shared.job_schemas.PrmLabelMethod`):

* ``shepherd`` (Math-Shepherd): every step probed, ``n_rollouts`` each (the finished last step
  excepted).
* ``binary_search`` (OmegaPRM): under the assumption that a prefix which cannot reach the answer
  stays unable to whatever follows it, the labels are positive up to the first such prefix and
  negative from it on; the first one is found by binary search between a prefix known to reach
  the answer and one known not to. Known without rollouts: the empty prefix (the problem's
  solutions ARE its rollouts: ``MC(0)`` = their share correct) and a finished solution's end.
  A correct solution is positive throughout; a problem none of whose solutions is correct
  (``MC(0) = 0``) has every step negative; otherwise about ``log2(M)`` prefixes are probed.
  Soft labels are the probed estimates; an unprobed positive step takes the estimate of the
  nearest probed positive prefix after it (a lower bound under the assumption), an unprobed
  negative step 0.

Nothing here does I/O: ``mc(i)`` is given (the stage's cached rollouts; tests pass fakes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shared.job_schemas import PrmLabelMethod


@dataclass(frozen=True)
class Estimate:
    """``MC`` of one prefix and the rollouts it took (0: known without rollouts)."""

    value: float
    rollouts: int


MonteCarlo = Callable[[int], Awaitable[Estimate]]
"""``mc(i)``: the estimate of the prefix of the first ``i`` steps, 1 <= i <= M."""


@dataclass
class StepLabels:
    labels: list[bool]
    soft_labels: list[float]
    rollouts_used: int = 0
    probed: list[int] = field(default_factory=list)
    """The prefixes (step counts) whose estimate was asked for, in order."""


def end_estimate(finished: bool, correct: bool) -> Estimate | None:
    """``MC(M)`` when it needs no rollout: a finished solution reaches its own answer only."""
    if finished:
        return Estimate(1.0 if correct else 0.0, 0)
    return None


async def shepherd(steps: int, mc: MonteCarlo) -> StepLabels:
    """Every step's estimate (asked for all at once: the agent batches their rollouts)."""
    estimates = await asyncio.gather(*(mc(i) for i in range(1, steps + 1)))
    return StepLabels(
        labels=[e.value > 0 for e in estimates],
        soft_labels=[e.value for e in estimates],
        rollouts_used=sum(e.rollouts for e in estimates),
        probed=list(range(1, steps + 1)),
    )


async def binary_search(steps: int, mc: MonteCarlo, start: float) -> StepLabels:
    """Labels from the first prefix that cannot reach the answer (module docstring);
    ``start`` is ``MC(0)``, the share of the problem's solutions that are correct."""
    seen: dict[int, float] = {}
    out = StepLabels([], [])

    async def probe(i: int) -> float:
        est = await mc(i)
        out.probed.append(i)
        out.rollouts_used += est.rollouts
        seen[i] = est.value
        return est.value

    if start <= 0:
        first_error = 1
    elif await probe(steps) > 0:
        first_error = steps + 1
    else:
        good, bad = 0, steps
        while bad - good > 1:
            mid = (good + bad) // 2
            if await probe(mid) > 0:
                good = mid
            else:
                bad = mid
        first_error = bad
    for i in range(1, steps + 1):
        positive = i < first_error
        out.labels.append(positive)
        if i in seen:
            out.soft_labels.append(seen[i])
        elif positive:
            later = [seen[j] for j in sorted(seen) if j > i and seen[j] > 0]
            out.soft_labels.append(later[0] if later else start)
        else:
            out.soft_labels.append(0.0)
    return out


async def label_steps(
    method: PrmLabelMethod, steps: int, mc: MonteCarlo, *, start: float
) -> StepLabels:
    """The labels of a solution of ``steps`` steps by ``method``."""
    if method is PrmLabelMethod.binary_search:
        return await binary_search(steps, mc, start)
    return await shepherd(steps, mc)
