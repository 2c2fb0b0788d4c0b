"""Every DRF exception becomes the one error shape with a sentence, never a repr (issue 12, point 1)."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions
from rest_framework.test import APIRequestFactory

from isol8_site import errors
from isol8_site.errors import exception_handler
from isol8_site.negotiation import accept_quality

CASES = [
    (exceptions.NotAcceptable(), 406, "not_acceptable"),
    (exceptions.MethodNotAllowed("GET"), 405, "method_not_allowed"),
    (exceptions.UnsupportedMediaType("text/xml"), 415, "unsupported_media_type"),
    (exceptions.ParseError("JSON parse error - Expecting value: line 1 column 1 (char 0)"), 400, "invalid_json"),
    (exceptions.Throttled(wait=3.2), 429, "rate_limited"),
    (exceptions.PermissionDenied(), 403, "forbidden"),
    (DjangoPermissionDenied(), 403, "forbidden"),
    (exceptions.NotAuthenticated(), 401, "unauthorized"),
    (exceptions.AuthenticationFailed(), 401, "unauthorized"),
    (exceptions.NotFound(), 404, "not_found"),
    (Http404(), 404, "not_found"),
    (exceptions.ValidationError({"request": {"runtime": ["This field is required."]}}), 400, "validation_error"),
    (exceptions.APIException({"detail": "nested"}), 500, "error"),
    (RuntimeError("secret internal detail"), 500, "internal_error"),
]


@pytest.mark.parametrize(("exc", "status", "code"), CASES)
def test_each_exception_path_gives_a_sentence_in_the_documented_shape(exc, status, code):
    request = APIRequestFactory().get("/x")
    response = exception_handler(exc, {"request": request, "view": None})
    assert response is not None
    assert response.status_code == status
    assert response.data["code"] == code
    message = response.data["error"]
    assert isinstance(message, str) and message
    for mark in ("ErrorDetail", "{'", "[", "secret internal detail"):
        assert mark not in message, message


def test_throttled_answers_say_when_to_retry():
    response = exception_handler(exceptions.Throttled(wait=3.2), {"request": None, "view": None})
    assert response["Retry-After"] == "4"


@pytest.mark.parametrize(
    ("header", "admitted"),
    [
        (None, True), ("", True), ("*/*", True), ("text/*", True), ("text/event-stream", True),
        ("application/json;q=1, text/event-stream;q=0.1", True), ("text/event-stream;q=0, */*", False),
        ("text/*;q=0, text/event-stream", True), ("application/json", False), ("text/html", False),
        ("garbage", True), ("*/*;q=0", False), ("text/event-stream;q=abc", False),
    ],
)
def test_accept_headers_admit_event_streams_as_rfc_9110_says(header, admitted):
    assert (accept_quality(header, "text/event-stream") > 0) is admitted


DOMAIN_ERRORS = [
    (errors.ValidationFailed("x"), 400), (errors.ValidationFailed("x", code="path_outside_sandbox"), 400),
    (errors.Unauthorized("x"), 401), (errors.Forbidden("x"), 403), (errors.PolicyDenied("x"), 403),
    (errors.NotFound("x"), 404), (errors.SessionBusy("x"), 409), (errors.SessionDead("x"), 409),
    (errors.SessionNotStarted("x"), 409), (errors.PayloadTooLarge("x"), 413), (errors.SetupFailed("x"), 422),
    (errors.InstallFailed("x"), 422), (errors.IdempotencyMismatch("x"), 422),
    (errors.QuotaExceeded("x", retry_after=1), 429),
    (errors.RateLimited("x", retry_after=2), 429), (errors.Unavailable("x"), 503), (errors.SandboxFull("x"), 507),
]


@pytest.mark.parametrize(("error", "status"), DOMAIN_ERRORS)
def test_domain_errors_map_to_their_documented_status(error, status):
    response = exception_handler(error, {"request": None, "view": None})
    assert response is not None and response.status_code == status
    assert response.data == {"error": "x", "code": error.code}


def test_every_domain_error_class_has_a_status():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.DomainError)]
    assert {c for c in classes if c is not errors.DomainError} == {type(e) for e, _ in DOMAIN_ERRORS}


def test_a_code_nobody_mapped_is_a_500_and_retry_hints_become_headers():
    assert errors.http_status("made_up") == 500
    assert errors.http_headers(errors.Unavailable("x", retry_after=2.1)) == {"Retry-After": "3"}
    assert errors.http_headers(errors.Unauthorized("x"))["WWW-Authenticate"] == "Bearer"
