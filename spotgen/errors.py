"""What the client raises: the API's own errors (code, message, field), an API it cannot reach, a job that
ended badly."""

from __future__ import annotations

from runtime.contract import JobErrorInfo, JobStatus


class ApiError(Exception):
    """An answer that is not a success: the HTTP status and the API's ``{code, message, field}``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (field {field})" if field else ""))
        self.status, self.code, self.message, self.field = status, code, message, field


class Unreachable(ApiError):
    """The API could not be reached (or kept failing) within the retry budget."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)


class JobFailed(Exception):
    """``wait(raise_on_failure=True)`` on a job that ended other than ``succeeded``, or images asked of it."""

    def __init__(self, status: JobStatus) -> None:
        error = status.error or JobErrorInfo(code=status.state, message=f"the job ended {status.state}")
        super().__init__(f"job {status.id} {status.state}: {error.code}: {error.message}")
        self.status = status
