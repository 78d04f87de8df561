"""The progress of a start, as the waking page, ``ocedge wake`` and ``ocedge status``
show it: the steps recorded in the state item (:attr:`ContainerState.steps`), each
with how long it took (or has taken so far), and the failing one with its reason.

Each step is written by whoever performs it — the waker (:mod:`infra.lifecycle`: wake
requested, the host stopping or starting), the container (:mod:`container.main`: the
container starting, the workspace opening, opencode starting) — with a write
conditional on the start's generation, so a stale container cannot add to a newer start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.interfaces import ContainerState, Status

# The container's own steps (the waker's are in infra.lifecycle).
STEP_WORKSPACE = "opening the workspace (files and sessions)"
STEP_OPENCODE = "starting opencode"
# Not recorded: a running container is ready since it registered.
STEP_READY = "ready"

DONE, CURRENT, FAILED = "done", "current", "failed"


@dataclass(frozen=True)
class StepReport:
    """One step of a start: ``seconds`` it took (``done``), has taken so far
    (``current``), or took until it failed (``failed``, with the start's reason)."""

    name: str
    at: float
    seconds: float
    state: str

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.name, "at": self.at, "seconds": round(self.seconds, 1),
                "state": self.state}

    def line(self, reason: str | None = None) -> str:
        """The step as a line of text: ``  12.3 s  starting opencode (current)``."""
        text = f"{self.seconds:6.1f} s  {self.name}"
        if self.state == CURRENT:
            text += " …"
        elif self.state == FAILED:
            text += f" — FAILED: {reason or 'no reason given'}"
        return text


def report(state: ContainerState, now: float) -> list[StepReport]:
    """The steps of the start ``state`` is in (starting), came from (running: every
    step done, then ready) or ended in (failed: the last step failed). Nothing while
    stopped or stopping: the steps there belong to a start long over."""
    if state.status not in (Status.STARTING, Status.RUNNING, Status.FAILED) or not state.steps:
        return []
    steps = sorted(state.steps, key=lambda step: step[1])
    # Where the last step ended: now (still going), when the container registered
    # (running), or when the start was marked failed.
    end = now if state.status == Status.STARTING else max(state.since, steps[-1][1])
    reports = []
    for i, (name, at) in enumerate(steps):
        last = i == len(steps) - 1
        until = end if last else steps[i + 1][1]
        kind = DONE
        if last and state.status == Status.STARTING:
            kind = CURRENT
        elif last and state.status == Status.FAILED:
            kind = FAILED
        reports.append(StepReport(name, at, max(0.0, until - at), kind))
    if state.status == Status.RUNNING:
        reports.append(StepReport(STEP_READY, end, 0.0, DONE))
    return reports


def lines(state: ContainerState, now: float) -> list[str]:
    """:func:`report` as lines of text, the failing step with the start's reason."""
    return [step.line(state.reason) for step in report(state, now)]
