"""The worker's verdict on a job that can never succeed as sent.

Its own module because the runner, the Celery task, the dead-letter hooks and the outcome bookkeeping all
raise or recognise it, and none of them should import another just for it.
"""

from __future__ import annotations

from runtime.contract import JobErrorInfo


class PermanentError(Exception):
    """The job can never succeed as sent: it ends ``failed`` and its message goes to the dead-letter queue."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(code, message, field)  # all arguments in args: Celery pickles exceptions
        self.info = JobErrorInfo(code=code, message=message, field=field)

    def __str__(self) -> str:
        return f"{self.info.code}: {self.info.message}"
