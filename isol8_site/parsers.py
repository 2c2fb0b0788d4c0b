"""The request body parser: DRF's JSON parser, with nesting too deep for Python refused cleanly.

``json`` recurses once per nesting level; a body nested a few thousand levels
deep raised RecursionError inside DRF, which answered 500. It is a parse error
like any other malformed body (400 invalid_json).
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class JsonBodyParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("the JSON is nested too deeply") from exc
