"""A job's progress as a rich bar: steps, the phase, the attempt, and where a resumed attempt started. Shared by
``spotgen submit --wait``, ``spotgen jobs watch`` and the demo of ``spotgen dev --demo``.

In a terminal the bar redraws in place; in a log (no terminal) rich prints it once, as it ended.
"""

from __future__ import annotations

from typing import Any

from runtime.contract import JobStatus


def note(status: JobStatus) -> str:
    """What the bar says beside the steps: ``denoise, attempt 2, resumed at step 7``."""
    text = status.phase or status.state
    if status.attempts > 1:
        text += f", attempt {status.attempts}"
    if status.resume is not None and status.resume.from_step:
        text += f", resumed at step {status.resume.from_step}"
    return text


class JobBar:
    """One job's bar, labelled ``label``, on ``console`` (default: stderr, so stdout stays for results)."""

    def __init__(self, label: str, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                                 console=console or Console(stderr=True))
        self.task = self.progress.add_task(label, total=None, note="queued")

    def __enter__(self) -> JobBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, status: JobStatus) -> None:
        self.progress.update(self.task, completed=status.progress.step, total=status.progress.total or None,
                             note=note(status))
