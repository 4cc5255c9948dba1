"""A diagnostic record of every denoising step a worker finishes: ``pid job attempt step`` per line.

The chaos harness reads it to count the steps an interruption cost (steps done twice). Each line is one
``write`` on a file opened with O_APPEND, so lines from several processes never interleave and a line is
on disk even if the process is killed the moment after. Off unless ``SPOTGEN_STEP_LOG`` names a file.
"""

from __future__ import annotations

import os
from pathlib import Path


class StepLog:
    def __init__(self, path: Path | None) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None

    def write(self, job_id: str, attempt: int, step: int) -> None:
        if self.fd is not None:
            os.write(self.fd, f"{os.getpid()} {job_id} {attempt} {step}\n".encode())


def read(path: Path) -> list[tuple[int, str, int, int]]:
    """The records as ``(pid, job, attempt, step)``."""
    records = []
    for line in path.read_text().splitlines():
        pid, job, attempt, step = line.split()
        records.append((int(pid), job, int(attempt), int(step)))
    return records
