"""The session id field, shared by the execute body and the file routes (its pattern is in the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator

from isol8_site.serializers import Text
from sessions_app.models import SESSION_ID

SESSION_ID_MESSAGE = "Must be 1-128 characters of A-Z a-z 0-9 . _ -"


class SessionIdField(Text):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("validators", [RegexValidator(SESSION_ID, message=SESSION_ID_MESSAGE)])
        super().__init__(**kwargs)
