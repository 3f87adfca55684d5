"""Trio instruments that count what the scheduler did during a test."""

from __future__ import annotations

import trio


class StepCounter(trio.abc.Instrument):
    """How many times each task ran, by name (a task that polls runs every time it wakes)."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1
