"""The execute request's serializers: isol8's ExecutionRequest, Isol8Options and the body around them.

They check shape, types and ranges (400, naming the field); what a tenant may
ask for is executions/policy.py's business.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer, inline_serializer
from rest_framework import serializers

from executions.models import Status
from isol8_site.config import ConfigError, parse_size
from isol8_site.errors import PolicyDenied, ValidationFailed, validation_error
from isol8_site.serializers import Boolean, Integer, Number, StrictSerializer, Text, check_sandbox_path
from sandbox.netfilter import PatternError, check_patterns
from sandbox.spec import NETWORK_MODES
from sessions_app.serializers import SessionIdField

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,16}$")
MAX_FILES = 100
MAX_INT = 2**31 - 1


@extend_schema_field({"type": "string", "enum": list(settings.ISOL8_RUNTIMES)})
class RuntimeField(Text):
    """A runtime's name: checked in validate_runtime (code unsupported_runtime), documented as the list."""


@extend_schema_serializer(component_name="ExecutionRequest")
class RequestSerializer(StrictSerializer):
    """isol8's ExecutionRequest."""

    # Exactly one source of code (validate): blank counts as absent, codeUrl is refused (403).
    openapi_extra = {"oneOf": [{"required": ["code"]}, {"required": ["cmd"]}, {"required": ["codeUrl"]}]}

    runtime = RuntimeField()
    code = Text(required=False, allow_blank=True, trim_whitespace=False)
    cmd = Text(required=False, allow_blank=True, trim_whitespace=False)
    codeUrl = Text(required=False, allow_blank=True)
    codeHash = Text(required=False, allow_blank=True)
    allowInsecureCodeUrl = Boolean(required=False)
    stdin = Text(required=False, allow_blank=True, trim_whitespace=False)
    env = serializers.DictField(
        child=Text(allow_blank=True, trim_whitespace=False), required=False
    )
    files = serializers.DictField(
        child=Text(allow_blank=True, trim_whitespace=False), required=False
    )
    outputPaths = serializers.ListField(
        child=Text(), required=False, max_length=MAX_FILES
    )
    timeoutMs = Integer(required=False, min_value=1, max_value=MAX_INT)
    fileExtension = Text(required=False)
    workdir = Text(required=False)
    setupScript = Text(required=False, allow_blank=True, trim_whitespace=False)
    installPackages = serializers.ListField(child=Text(), required=False)
    metadata = serializers.DictField(child=Text(allow_blank=True), required=False)
    # Beyond isol8: the code runs on a pseudo-terminal (a REPL, `bash -i`); see GET /execute/ws.
    tty = Boolean(required=False)

    def validate_runtime(self, value: str) -> str:
        if value not in settings.ISOL8_RUNTIMES:
            raise ValidationFailed(
                f"Unknown runtime {value!r}. Available: {', '.join(settings.ISOL8_RUNTIMES)}",
                code="unsupported_runtime",
            )
        return value

    def validate_env(self, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not ENV_NAME.match(name):
                raise serializers.ValidationError(f"{name!r} is not a valid variable name.")
        return value

    def validate_files(self, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_FILES:
            raise serializers.ValidationError(f"At most {MAX_FILES} files.")
        return {check_sandbox_path(p, allow_tmp=True): text for p, text in value.items()}

    def validate_outputPaths(self, value: list[str]) -> list[str]:  # noqa: N802 - isol8's name
        return [check_sandbox_path(p, allow_tmp=True) for p in value]

    def validate_fileExtension(self, value: str) -> str:  # noqa: N802
        if not EXTENSION.match(value):
            raise serializers.ValidationError("Must look like \".py\" or \".cjs\".")
        return value

    def validate_workdir(self, value: str) -> str:
        full = posixpath.normpath(posixpath.join("/sandbox", value))
        if full != "/sandbox" and not full.startswith("/sandbox/"):
            raise validation_error("Working directory must be inside /sandbox", code="path_outside_sandbox")
        return full

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        sources = [k for k in ("code", "cmd", "codeUrl") if attrs.get(k, "").strip()]
        if len(sources) > 1:
            raise validation_error(
                "request: code, codeUrl and cmd are mutually exclusive; provide exactly one"
            )
        if not sources:
            raise validation_error("request: must include exactly one of code or cmd (not blank)")
        if sources == ["codeUrl"]:
            raise PolicyDenied("Remote code fetching is disabled on this server; send the code itself",
            )
        return attrs


@extend_schema_serializer(component_name="NetworkFilter")
class NetworkFilterSerializer(StrictSerializer):
    """isol8's NetworkFilterConfig: host regexes for network "filtered" (searched, case-insensitive)."""

    whitelist = serializers.ListField(
        child=Text(), required=False,
        help_text="Hosts a run may reach (empty: any host the blacklist and the tenant's policy let through).",
    )
    blacklist = serializers.ListField(child=Text(), required=False, help_text="Hosts refused; wins over the whitelist.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # Valid regular expressions, at most netfilter.MAX_PATTERNS of bounded length each,
        # whatever the network: a client's mistake is named, never carried along.
        for name in ("whitelist", "blacklist"):
            try:
                attrs[name] = check_patterns(attrs.get(name, []), name=f"options.networkFilter.{name}")
            except PatternError as exc:
                raise validation_error(str(exc)) from None
        return attrs


@extend_schema_serializer(component_name="Isol8Options")
class OptionsSerializer(StrictSerializer):
    """The subset of isol8's Isol8Options a client may set."""

    # Options isol8 clients send on every request, accepted and checked below
    # or ignored because the server decides them.
    known_extra = (
        "mode", "persist", "debug", "remoteCode", "poolStrategy",
        "poolSize", "readonlyRootFs", "security", "image", "audit",
    )

    timeoutMs = Integer(required=False, min_value=1, max_value=MAX_INT)
    memoryLimit = serializers.JSONField(required=False, help_text='Bytes, or a size such as "512m" or "2g".')
    cpuLimit = Number(required=False, min_value=0.01, max_value=64)
    pidsLimit = Integer(required=False, min_value=8, max_value=65536)
    maxOutputSize = Integer(required=False, min_value=1, max_value=MAX_INT)
    sandboxSize = serializers.JSONField(required=False, help_text='Bytes, or a size such as "128m".')
    tmpSize = serializers.JSONField(required=False, help_text='Bytes, or a size such as "64m".')
    secrets = serializers.DictField(
        child=Text(allow_blank=True, trim_whitespace=False), required=False
    )
    network = serializers.ChoiceField(choices=NETWORK_MODES, required=False)
    # Used by network "filtered" only; with another network it is checked and ignored
    # (isol8 clients send empty lists on every request).
    networkFilter = NetworkFilterSerializer(required=False)
    logNetwork = Boolean(required=False, help_text='network "filtered": the result carries networkLogs.')

    def validate_secrets(self, value: dict[str, str]) -> dict[str, str]:
        # Bounded so that masking every output chunk stays cheap (executions/runner.py Masker).
        if len(value) > settings.ISOL8_MAX_SECRETS:
            raise serializers.ValidationError(f"At most {settings.ISOL8_MAX_SECRETS} secrets.")
        for name, secret in value.items():
            if not ENV_NAME.match(name):
                raise serializers.ValidationError(f"{name!r} is not a valid variable name.")
            if len(secret.encode()) > settings.ISOL8_MAX_SECRET_BYTES:
                raise serializers.ValidationError(
                    f"{name}: a secret is at most {settings.ISOL8_MAX_SECRET_BYTES} bytes."
                )
        return value

    def _size(self, value: Any, name: str) -> int:
        try:
            return parse_size(value, name=f"options.{name}")
        except ConfigError as exc:
            raise validation_error(str(exc)) from exc

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        for name in ("memoryLimit", "sandboxSize", "tmpSize"):
            if name in attrs:
                attrs[name] = self._size(attrs[name], name)
        data = self.raw
        if data.get("readonlyRootFs") is False:
            raise PolicyDenied("options.readonlyRootFs: the root filesystem is always read-only")
        security = data.get("security")
        if isinstance(security, dict) and security.get("seccomp", "strict") != "strict":
            raise PolicyDenied("options.security.seccomp: only \"strict\" is allowed")
        if data.get("image"):
            raise PolicyDenied("options.image: custom images are not allowed")
        return attrs


def execute_body(data: Any) -> dict[str, Any]:
    """The body in its ``{"request": {...}, "options", "sessionId"}`` form.

    isol8's documented curl sends the request fields at the top level
    (``{"code": ..., "runtime": ...}``); that is accepted as shorthand. Both
    forms in one body are ambiguous and refused.
    """
    if not isinstance(data, dict):
        raise validation_error("The body must be a JSON object")
    top = [name for name in data if name in RequestSerializer._declared_fields]
    if not top:
        return data
    if "request" in data:
        raise validation_error(
            f"Send the request fields inside \"request\" or at the top level, not both "
            f"(found {top[0]!r} at the top level)"
        )
    body = {name: value for name, value in data.items() if name not in top}
    body["request"] = {name: data[name] for name in top}
    return body


@extend_schema_serializer(component_name="ExecuteBody")
class ExecuteSerializer(StrictSerializer):
    """The body of POST /execute, /execute/stream and the WebSocket's execute message."""

    request = RequestSerializer()
    options = OptionsSerializer(required=False)
    sessionId = SessionIdField(required=False)
    stateful = Boolean(
        required=False,
        help_text="With sessionId: the session keeps one live interpreter (python, node, bash) and each run is a "
        "cell in it, answered with value, outputs, exception and stateLost. Fixed by the session's first execute; "
        "later ones may leave it out.",
    )
    callbackUrl = Text(required=False, help_text="POST the result here when the run ends (signed; see README). "
                       "Only to the tenant's callback hosts, never to private addresses.")


class BatchSerializer(StrictSerializer):
    """The body of POST /execute/batch: execute bodies, run independently."""

    requests = serializers.ListField(
        child=serializers.JSONField(), min_length=1,
        help_text="Each one an execute body (ExecuteBody, or its top-level shorthand); at most ISOL8_BATCH_MAX.",
    )
    callbackUrl = Text(required=False, help_text="The callback of every item that names none of its own.")

    def validate_requests(self, value: list[Any]) -> list[Any]:
        if len(value) > settings.ISOL8_BATCH_MAX:
            raise serializers.ValidationError(f"At most {settings.ISOL8_BATCH_MAX} requests in one batch.")
        return value


class BatchItemSerializer(serializers.Serializer):
    """One item of a batch's answer: its execution, or why it was not started (documentation)."""

    executionId = serializers.UUIDField(required=False)
    error = serializers.CharField(required=False)
    code = serializers.CharField(required=False)
    status = serializers.IntegerField(required=False, help_text="The HTTP status it would have had alone.")


class BatchAnswerSerializer(serializers.Serializer):
    batchId = serializers.UUIDField()
    items = BatchItemSerializer(many=True, help_text="In the order of the requests.")
    started = serializers.IntegerField()
    refused = serializers.IntegerField()


# ------------------------------------------------------------- answers (documentation)
# The answers are built as dicts (executions/results.py) and the result of
# POST /execute leaves the worker as JSON; these serializers describe them for
# the OpenAPI document (isol8_site/openapi.py), and the contract test checks
# the live answers against that description.


class NetworkLogEntrySerializer(serializers.Serializer):
    """One connection attempt of a filtered run, as the egress proxy logged it (isol8's NetworkLogEntry, plus)."""

    timestamp = serializers.DateTimeField()
    method = serializers.CharField(help_text='"CONNECT" for HTTPS (and any tunnel), else the HTTP method.')
    host = serializers.CharField()
    port = serializers.IntegerField()
    path = serializers.CharField(required=False, allow_null=True, help_text="Plain HTTP only.")
    action = serializers.ChoiceField(choices=["ALLOW", "BLOCK"])
    reason = serializers.CharField(
        allow_blank=True,
        help_text='Why it was blocked ("" when allowed): blacklisted, not_whitelisted, tenant_policy, ip_literal, '
        "port_not_allowed, private_address, connection_limit, tenant_connection_limit, byte_limit, "
        "pattern_timeout, bad_request, connect_failed.",
    )
    bytesUp = serializers.IntegerField()
    bytesDown = serializers.IntegerField()
    durationMs = serializers.IntegerField()


class NetworkTotalsSerializer(serializers.Serializer):
    connections = serializers.IntegerField(help_text="Every attempt, the dropped ones included.")
    allowed = serializers.IntegerField()
    blocked = serializers.IntegerField()
    bytesUp = serializers.IntegerField()
    bytesDown = serializers.IntegerField()
    dropped = serializers.IntegerField(help_text="Attempts counted but not kept in entries (past the log's cap).")


class NetworkLogSerializer(serializers.Serializer):
    entries = NetworkLogEntrySerializer(many=True)
    totals = NetworkTotalsSerializer()


class CellExceptionSerializer(serializers.Serializer):
    """A stateful cell's exception, structured (the same text is in stderr)."""

    ename = serializers.CharField(help_text='Its type, e.g. "ZeroDivisionError".')
    evalue = serializers.CharField(allow_blank=True)
    traceback = serializers.ListField(child=serializers.CharField(allow_blank=True),
                                      help_text="The formatted lines: the cell's frames only, no interpreter's.")


# One display of a stateful cell: a MIME bundle (the ``display`` stream event's data).
# (A Serializer cannot declare a field named "data": inline_serializer builds it.)
DisplaySerializer = inline_serializer("Display", {
    "type": serializers.ChoiceField(choices=["display"]),
    "data": serializers.DictField(help_text='MIME type → content: "text/plain", "text/html", "image/png" (base64), '
                                  '"image/svg+xml", "application/json" (any JSON), ...'),
})


class ExecutionResultSerializer(serializers.Serializer):
    """isol8's ExecutionResult, plus ``status`` and ``timedOut``."""

    stdout = serializers.CharField(help_text="Trailing whitespace trimmed; cut with a marker past maxOutputSize.")
    stderr = serializers.CharField()
    exitCode = serializers.IntegerField(help_text="137 after a timeout or an OOM kill.")
    durationMs = serializers.IntegerField()
    truncated = serializers.BooleanField()
    executionId = serializers.UUIDField()
    runtime = serializers.CharField()
    timestamp = serializers.DateTimeField()
    status = serializers.ChoiceField(choices=Status.choices)
    timedOut = serializers.BooleanField()
    files = serializers.DictField(
        child=serializers.CharField(), required=False, help_text="outputPaths' contents, base64; only when asked."
    )
    error = serializers.CharField(required=False, help_text="Why the service could not run it (status error).")
    networkLogs = NetworkLogEntrySerializer(
        many=True, required=False,
        help_text='network "filtered" with logNetwork: its connection attempts (omitted when there were none).',
    )
    value = serializers.DictField(
        required=False, allow_null=True,
        help_text="Stateful sessions: the value of the cell's trailing expression as a MIME bundle "
        '("text/plain" always; "text/html", "image/png", ... when the object offers them); null when none.',
    )
    outputs = serializers.ListField(
        child=DisplaySerializer, required=False,
        help_text="Stateful sessions: the cell's displays (plots among them), in order.",
    )
    exception = CellExceptionSerializer(required=False, allow_null=True,
                                        help_text="Stateful sessions: the exception the cell raised, or null.")
    stateLost = serializers.BooleanField(
        required=False,
        help_text="Stateful sessions: the interpreter was started again (a cell killed after its timeout's grace, "
        "an OOM kill, the interpreter ending): what earlier cells defined is gone.",
    )
    displaysDropped = serializers.IntegerField(
        required=False, help_text="Stateful sessions: displays left out past ISOL8_DISPLAY_MAX_BYTES."
    )


class HistoryRecordSerializer(ExecutionResultSerializer):
    """An execution in the history: the result (once finished) plus what was asked and when."""

    code = serializers.CharField(help_text="The code, or the cmd.")
    sessionId = serializers.CharField(allow_null=True)
    batchId = serializers.UUIDField(allow_null=True)
    createdAt = serializers.DateTimeField()
    startedAt = serializers.DateTimeField(allow_null=True)
    finishedAt = serializers.DateTimeField(allow_null=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A queued or running execution has no result yet.
        for name in ("stdout", "stderr", "exitCode", "durationMs", "truncated", "timestamp", "timedOut"):
            self.fields[name].required = False


class ExecutionDetailSerializer(HistoryRecordSerializer):
    """GET /executions/{id}: the history record plus the egress proxy's whole log."""

    networkLog = NetworkLogSerializer(
        allow_null=True, help_text='network "filtered": every connection attempt and the totals; null otherwise.'
    )


class HistoryPageSerializer(serializers.Serializer):
    results = HistoryRecordSerializer(many=True)
    next = serializers.URLField(allow_null=True, help_text="The next page (older executions), or null.")
