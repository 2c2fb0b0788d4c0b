"""The request fields every API uses: strict (no coercion, no trimming) and unknown-field-proof.

A value of the wrong JSON type is refused, never converted: ``"10"`` is not
10, ``" python"`` is not ``"python"``, ``"true"`` is not ``true``.
"""

from __future__ import annotations

import posixpath
from typing import Any

from rest_framework import serializers

from isol8_site.errors import validation_error

SANDBOX_ROOTS = ("/sandbox", "/tmp")


class StrictSerializer(serializers.Serializer):
    """A serializer that refuses fields it does not know, naming the first one."""

    known_extra: tuple[str, ...] = ()

    def to_internal_value(self, data: Any) -> Any:
        # Kept for validate(): nested serializers have no initial_data.
        self.raw = data if isinstance(data, dict) else {}
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields) - set(self.known_extra))
            if unknown:
                raise serializers.ValidationError({unknown[0]: ["Unknown field."]})
        return super().to_internal_value(data)


class Text(serializers.CharField):
    """A string field that refuses numbers and booleans instead of converting them.

    Nothing is trimmed: `" python"` is not `"python"`, and a value the client
    did not mean is refused rather than quietly repaired.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        if "\x00" in data:
            # The history keeps requests as text, and PostgreSQL refuses NUL in
            # text and JSON alike: refused on every database, with a reason.
            raise serializers.ValidationError("Must not contain NUL characters (send binary data base64-encoded).")
        return str(super().to_internal_value(data))


class Integer(serializers.IntegerField):
    """A JSON integer: strings ("10"), booleans and floats (10.0) are refused, never converted."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return int(super().to_internal_value(data))


class Number(serializers.FloatField):
    """A JSON number (integer or not): strings and booleans are refused."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return float(super().to_internal_value(data))


class Boolean(serializers.BooleanField):
    """A JSON true or false: "true", "1" or 1 are refused."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


def check_sandbox_path(path: str, *, allow_tmp: bool) -> str:
    """A path under /sandbox (or /tmp), relative ones being relative to /sandbox."""
    if "\x00" in path:
        raise validation_error(f"Path {path!r} contains a NUL character")
    full = posixpath.normpath(path if path.startswith("/") else posixpath.join("/sandbox", path))
    roots = SANDBOX_ROOTS if allow_tmp else SANDBOX_ROOTS[:1]
    if not any(full == r or full.startswith(r + "/") for r in roots) or full in roots:
        raise validation_error(f"Path {path!r} is outside {' or '.join(roots)}", code="path_outside_sandbox")
    return full
