"""Exceptions raised by the isol8 clients.

Every failure the server reports comes back as JSON ``{"error": ..., "code": ...}``
with an HTTP status. The client turns it into one exception class per status
family, so callers can ``except QuotaExceededError`` instead of comparing
numbers, while ``.status``, ``.code`` and ``.message`` keep the exact answer for
logs. The original TypeScript isol8 server sends no ``code``; then it is None.

User code that fails is *not* an exception: it is a result with a non-zero
``exit_code``.
"""

from __future__ import annotations

from typing import Any


class Isol8Error(Exception):
    """Base class: anything that stopped a client call from getting its answer."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        # Seconds the server asked us to wait (Retry-After), for 429 and 503.
        self.retry_after = retry_after
        self.details = details

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        label = f"{self.status} {self.code}" if self.code else str(self.status)
        return f"{self.message} ({label})"


class Isol8ConnectionError(Isol8Error):
    """The server could not be reached or the connection broke (no HTTP status)."""


class BadRequestError(Isol8Error):
    """400, 413, 415, 422 and other 4xx: the request itself was wrong."""


class AuthenticationError(Isol8Error):
    """401: missing, unknown, revoked or expired API key."""


class PermissionDeniedError(Isol8Error):
    """403: the key is valid but its tenant may not do this (policy, disabled tenant)."""


class NotFoundError(Isol8Error):
    """404: no such session, file, execution or route (for this tenant)."""


class ConflictError(Isol8Error):
    """409: e.g. a session that is already running an execution."""


class QuotaExceededError(Isol8Error):
    """429: a tenant quota is used up; ``retry_after`` says when to try again."""


class UnavailableError(Isol8Error):
    """503: the service has no capacity right now; ``retry_after`` says when to try again."""


class ServerError(Isol8Error):
    """500 and other 5xx: the server failed."""


_BY_STATUS: dict[int, type[Isol8Error]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: QuotaExceededError,
    503: UnavailableError,
}


def error_class_for(status: int) -> type[Isol8Error]:
    """The exception class that stands for an HTTP error status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else BadRequestError
