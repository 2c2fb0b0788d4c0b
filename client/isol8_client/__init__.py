"""Python client for an isol8 code-execution server (this project or the original isol8).

>>> from isol8_client import RemoteIsol8
>>> with RemoteIsol8("http://localhost:3000", "isol8_...") as isol8:
...     print(isol8.execute("print('hello')").stdout)
"""

from isol8_client._version import __version__
from isol8_client.aio import AsyncRemoteIsol8
from isol8_client.client import RemoteIsol8
from isol8_client.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    Isol8ConnectionError,
    Isol8Error,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    ServerError,
    UnavailableError,
)
from isol8_client.interactive import InteractiveRun
from isol8_client.models import ExecutionResult, SessionInfo, StreamEvent

__all__ = [
    "AsyncRemoteIsol8",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ExecutionResult",
    "InteractiveRun",
    "Isol8ConnectionError",
    "Isol8Error",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RemoteIsol8",
    "ServerError",
    "SessionInfo",
    "StreamEvent",
    "UnavailableError",
    "__version__",
]
