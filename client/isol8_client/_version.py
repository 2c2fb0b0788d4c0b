"""The package version, in one place for pyproject and the User-Agent header."""

__version__ = "0.1.0"
