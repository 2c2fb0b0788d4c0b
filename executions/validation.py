"""Request validation for /execute and /execute/stream: serializers and policy.

The serializers check shape and ranges (400, naming the field); ``resolve_limits``
applies the config defaults and the tenant's caps (403 policy_denied when a
request asks for more than its tenant may have, never a silent lowering).
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from django.conf import settings
from rest_framework import serializers

from executions.spec import ExecutionSpec, Limits
from isol8_site.config import ConfigError, parse_size
from isol8_site.errors import ApiError, validation_error
from tenants.models import NETWORK_MODES, Tenant

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,16}$")
SESSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_FILES = 100
MAX_INT = 2**31 - 1
MIN_MEMORY = 32 * 1024 * 1024


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
    roots = ("/sandbox", "/tmp") if allow_tmp else ("/sandbox",)
    if not any(full == r or full.startswith(r + "/") for r in roots) or full in roots:
        raise ApiError(
            400, "path_outside_sandbox", f"Path {path!r} is outside {' or '.join(roots)}"
        )
    return full


class RequestSerializer(StrictSerializer):
    """isol8's ExecutionRequest."""

    runtime = Text()
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

    def validate_runtime(self, value: str) -> str:
        if value not in settings.ISOL8_RUNTIMES:
            raise ApiError(
                400,
                "unsupported_runtime",
                f"Unknown runtime {value!r}. Available: {', '.join(settings.ISOL8_RUNTIMES)}",
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
            raise ApiError(400, "path_outside_sandbox", "Working directory must be inside /sandbox")
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
            raise ApiError(
                403, "policy_denied",
                "Remote code fetching is disabled on this server; send the code itself",
            )
        return attrs


class OptionsSerializer(StrictSerializer):
    """The subset of isol8's Isol8Options a client may set."""

    # Options isol8 clients send on every request, accepted and checked below
    # or ignored because the server decides them.
    known_extra = (
        "mode", "persist", "debug", "logNetwork", "networkFilter", "remoteCode", "poolStrategy",
        "poolSize", "readonlyRootFs", "security", "image", "audit",
    )

    timeoutMs = Integer(required=False, min_value=1, max_value=MAX_INT)
    memoryLimit = serializers.JSONField(required=False)
    cpuLimit = Number(required=False, min_value=0.01, max_value=64)
    pidsLimit = Integer(required=False, min_value=8, max_value=65536)
    maxOutputSize = Integer(required=False, min_value=1, max_value=MAX_INT)
    sandboxSize = serializers.JSONField(required=False)
    tmpSize = serializers.JSONField(required=False)
    secrets = serializers.DictField(
        child=Text(allow_blank=True, trim_whitespace=False), required=False
    )
    network = serializers.ChoiceField(choices=NETWORK_MODES, required=False)

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
            raise ApiError(403, "policy_denied", "options.readonlyRootFs: the root filesystem is always read-only")
        security = data.get("security")
        if isinstance(security, dict) and security.get("seccomp", "strict") != "strict":
            raise ApiError(403, "policy_denied", "options.security.seccomp: only \"strict\" is allowed")
        if data.get("image"):
            raise ApiError(403, "policy_denied", "options.image: custom images are not allowed")
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


class ExecuteSerializer(StrictSerializer):
    request = RequestSerializer()
    options = OptionsSerializer(required=False)
    sessionId = Text(required=False)

    def validate_sessionId(self, value: str) -> str:  # noqa: N802
        if not SESSION_ID.match(value):
            raise serializers.ValidationError("Must be 1-128 characters of A-Z a-z 0-9 . _ -")
        return value


def policy_denied(message: str) -> ApiError:
    return ApiError(403, "policy_denied", message)


def resolve_limits(*, tenant: Tenant, request: dict[str, Any], options: dict[str, Any]) -> Limits:
    """Effective limits: the request's own, else the config defaults; never above the caps."""
    d = settings.ISOL8_DEFAULTS
    timeout = request.get("timeoutMs") or options.get("timeoutMs") or d.timeout_ms
    memory = options.get("memoryLimit", d.memory_limit)
    cpu = options.get("cpuLimit", d.cpu_limit)
    pids = options.get("pidsLimit", d.pids_limit)
    max_output = options.get("maxOutputSize", d.max_output_size)
    network = options.get("network", d.network)
    if request["runtime"] not in tenant.allowed_runtimes:
        raise policy_denied(f"Runtime {request['runtime']!r} is not allowed for this tenant")
    if timeout > tenant.max_timeout_ms:
        raise policy_denied(f"timeoutMs {timeout} is above this tenant's cap of {tenant.max_timeout_ms}")
    if memory > tenant.max_memory:
        raise policy_denied(f"memoryLimit {memory} bytes is above this tenant's cap of {tenant.max_memory}")
    if memory < MIN_MEMORY:
        raise validation_error(f"options.memoryLimit: must be at least {MIN_MEMORY // 2**20}m")
    if cpu > tenant.max_cpu:
        raise policy_denied(f"cpuLimit {cpu} is above this tenant's cap of {tenant.max_cpu}")
    if pids > tenant.max_pids:
        raise policy_denied(f"pidsLimit {pids} is above this tenant's cap of {tenant.max_pids}")
    if max_output > tenant.max_output_size:
        raise policy_denied(
            f"maxOutputSize {max_output} is above this tenant's cap of {tenant.max_output_size}"
        )
    if network not in tenant.allowed_networks:
        raise policy_denied(f"network {network!r} is not allowed for this tenant")
    if network != "none":
        raise policy_denied(f"network {network!r} is not available on this server yet")
    # Scratch space lives in memory (tmpfs pages count against the limit), so
    # its defaults shrink with a memory limit the request lowered.
    sandbox_default, tmp_default = d.sandbox_size, d.tmp_size
    if "memoryLimit" in options:
        sandbox_default = min(sandbox_default, memory // 4)
        tmp_default = min(tmp_default, memory // 8)
    sandbox_size = options.get("sandboxSize", sandbox_default)
    tmp_size = options.get("tmpSize", tmp_default)
    if sandbox_size + tmp_size >= memory:
        raise validation_error(
            "options.sandboxSize: sandboxSize + tmpSize must stay below memoryLimit "
            "(scratch space counts against memory)"
        )
    return Limits(
        timeout_ms=int(timeout),
        memory=int(memory),
        cpu=float(cpu),
        pids=int(pids),
        max_output=int(max_output),
        sandbox_size=int(sandbox_size),
        tmp_size=int(tmp_size),
        network=network,
    )


def build_spec(request: dict[str, Any], options: dict[str, Any]) -> ExecutionSpec:
    return ExecutionSpec(
        runtime=request["runtime"],
        code=request.get("code", "") if request.get("code", "").strip() else "",
        cmd=request.get("cmd", "") if request.get("cmd", "").strip() else "",
        stdin=request.get("stdin", ""),
        env=request.get("env", {}),
        files=request.get("files", {}),
        output_paths=request.get("outputPaths", []),
        file_extension=request.get("fileExtension", ""),
        workdir=request.get("workdir", ""),
        setup_script=request.get("setupScript", ""),
        metadata=request.get("metadata", {}),
        secrets=options.get("secrets", {}),
        install_packages=request.get("installPackages", []),
    )
