"""The engine's errors. Their messages are sentences a client may see; details go to the log."""

from __future__ import annotations


class SandboxError(Exception):
    """The sandbox failed (not the user's code): Docker, the launcher, the container."""


class DockerUnavailableError(SandboxError):
    """The Docker engine does not answer (the worker cannot run anything now)."""


class ImageMissingError(SandboxError):
    """A sandbox image is not built on this engine."""


class InstallError(SandboxError):
    """installPackages failed: the message is isol8's "Package install failed (...)"."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
