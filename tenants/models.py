"""Tenants, their quotas, and their API keys."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from sandbox.netfilter import PatternError, check_patterns
from sandbox.runtimes import RUNTIME_NAMES


def default_runtimes() -> list[str]:
    return list(RUNTIME_NAMES)


def default_networks() -> list[str]:
    return ["none"]


def _tenant_default(name: str) -> int | None:
    value = settings.ISOL8_TENANT_DEFAULTS[name]
    return None if value is None else int(value)


def default_max_concurrent() -> int | None:
    return _tenant_default("max_concurrent")


def default_max_per_minute() -> int | None:
    return _tenant_default("max_per_minute")


def default_max_sessions() -> int | None:
    return _tenant_default("max_sessions")


def _tenant_cap(name: str) -> int:
    value = settings.ISOL8_TENANT_DEFAULTS[name]
    if value is None:
        raise ValueError(f"the tenant cap {name} needs a value")
    return int(value)


def default_max_timeout_ms() -> int:
    return _tenant_cap("max_timeout_ms")


def default_max_memory() -> int:
    return _tenant_cap("max_memory")


def default_max_session_memory() -> int | None:
    return _tenant_default("max_session_memory")


def default_max_session_cpus() -> float | None:
    value = settings.ISOL8_TENANT_DEFAULTS["max_session_cpus"]
    return None if value is None else float(value)


def default_max_egress_connections() -> int:
    return int(settings.ISOL8_EGRESS_RUN_CONNECTIONS)


def default_max_egress_bytes() -> int:
    return int(settings.ISOL8_EGRESS_RUN_BYTES)


def default_egress_bytes_per_second() -> int:
    return int(settings.ISOL8_EGRESS_RUN_BPS)


def default_max_egress_open() -> int:
    return int(settings.ISOL8_EGRESS_TENANT_CONNECTIONS)


# The built-in tenant of the master key behaves like isol8's single-key server:
# no per-minute, session or monthly limit, as many runs at once as the server's
# maxConcurrent allows, package installs, and network "filtered" to any host the
# request's whitelist names (no egress_hosts of its own). New tenants get the
# settings' conservative defaults instead.
DEFAULT_TENANT_FIELDS: dict[str, object] = {
    "name": "Default (master key)",
    "max_concurrent": None,
    "max_per_minute": None,
    "max_sessions": None,
    "monthly_seconds": None,
    "max_session_memory": None,
    "max_session_cpus": None,
    "allow_installs": True,
    "allowed_networks": ["none", "filtered"],
}


class Tenant(models.Model):
    """A customer of the service. Everything it owns is scoped by it."""

    slug = models.SlugField(
        max_length=64,
        unique=True,
        validators=[RegexValidator(r"^[a-z0-9][a-z0-9-]*$", "lowercase letters, digits and dashes")],
    )
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(
        default=True, help_text="A disabled tenant's keys get 403 on every route."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # Quotas and caps. A request over a cap is refused (403 policy_denied), never
    # silently lowered; a quota that is used up gives 429 quota_exceeded. An
    # empty quota means no limit of its own (the server's maxConcurrent still
    # bounds concurrency).
    max_concurrent = models.PositiveIntegerField(
        null=True, blank=True, default=default_max_concurrent, validators=[MinValueValidator(1)],
        help_text="Executions running at once; empty = up to the server's maxConcurrent.",
    )
    max_per_minute = models.PositiveIntegerField(
        null=True, blank=True, default=default_max_per_minute, validators=[MinValueValidator(1)],
        help_text="Executions started per rolling minute; empty = unlimited.",
    )
    max_sessions = models.PositiveIntegerField(
        null=True, blank=True, default=default_max_sessions,
        help_text="Live persistent sessions; empty = unlimited.",
    )
    max_timeout_ms = models.PositiveIntegerField(
        default=default_max_timeout_ms, validators=[MinValueValidator(1)],
        help_text="Highest timeoutMs a request may ask for.",
    )
    max_memory = models.PositiveBigIntegerField(
        default=default_max_memory, validators=[MinValueValidator(64 * 1024 * 1024)],
        help_text="Highest memoryLimit, in bytes.",
    )
    max_cpu = models.FloatField(default=2.0, help_text="Highest cpuLimit (CPUs).")
    max_pids = models.PositiveIntegerField(default=256, help_text="Highest pidsLimit.")
    max_output_size = models.PositiveIntegerField(
        default=8 * 1024 * 1024, help_text="Highest maxOutputSize per stream, in bytes."
    )
    allowed_runtimes = models.JSONField(default=default_runtimes)
    allowed_networks = models.JSONField(
        default=default_networks, help_text='Network modes a request may pick; "none" is the default.'
    )
    allow_installs = models.BooleanField(
        default=False,
        help_text="May use installPackages (installs reach only the package registries, via the egress proxy).",
    )
    monthly_seconds = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Execution seconds per calendar month (runs' time, plus CPU time sessions use between "
        "runs); empty = unlimited.",
    )
    # What all of a tenant's live sessions may hold together: a session's
    # container keeps its memory and CPUs while idle, and background processes
    # keep using them.
    max_session_memory = models.PositiveBigIntegerField(
        null=True, blank=True, default=default_max_session_memory,
        help_text="Memory limits of all live sessions together, in bytes; empty = unlimited.",
    )
    max_session_cpus = models.FloatField(
        null=True, blank=True, default=default_max_session_cpus,
        help_text="CPU limits of all live sessions together; empty = unlimited.",
    )
    # Webhooks (callbackUrl): only to these hosts, signed with this secret.
    callback_hosts = models.JSONField(
        default=list, blank=True,
        help_text='Host names a callbackUrl may name: "hooks.example.com" or "*.example.com" (any subdomain). '
        "Empty = no callbacks. Private, loopback and link-local addresses are refused whatever the list says.",
    )
    webhook_secret = models.CharField(
        max_length=80, blank=True, editable=False,
        help_text="Signs callbacks (HMAC-SHA256). Set with the admin action, which shows it once.",
    )
    # network "filtered" (needs "filtered" in allowed_networks): what a filtered run may reach.
    egress_hosts = models.JSONField(
        default=list, blank=True,
        help_text='Regular expressions searched in host names, as in isol8\'s networkFilter ("^pypi\\.org$", '
        '"\\.example\\.com$"): a filtered run reaches a host only if one of them matches it too, so a '
        "request's whitelist can only narrow them. Empty = no restriction of the tenant's own.",
    )
    max_egress_connections = models.PositiveIntegerField(
        default=default_max_egress_connections, validators=[MinValueValidator(1)],
        help_text="Connections the egress proxy lets through for one filtered run; later ones are refused.",
    )
    max_egress_bytes = models.PositiveBigIntegerField(
        default=default_max_egress_bytes, validators=[MinValueValidator(1)],
        help_text="Bytes a filtered run may send and receive, together.",
    )
    egress_bytes_per_second = models.PositiveBigIntegerField(
        default=default_egress_bytes_per_second,
        help_text="Bandwidth of a filtered run, all its connections together, in bytes per second; 0 = unlimited.",
    )
    max_egress_open = models.PositiveIntegerField(
        default=default_max_egress_open, validators=[MinValueValidator(1)],
        help_text="Connections this tenant's filtered runs may hold open at once on one worker host.",
    )

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        # Checked here so that the admin names a bad pattern instead of every
        # filtered run of the tenant failing later.
        hosts = self.egress_hosts
        if not isinstance(hosts, list):
            raise ValidationError({"egress_hosts": 'A list of patterns, e.g. ["^pypi\\.org$"].'})
        try:
            check_patterns(hosts, name="egress_hosts")
        except PatternError as exc:
            raise ValidationError({"egress_hosts": str(exc)}) from None


class ApiKey(models.Model):
    """A tenant's API key. Only its digest is stored; the plaintext is shown once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=16, help_text="First 10 characters, for recognising a key.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.display_prefix} ({self.tenant.slug})"

    @property
    def display_prefix(self) -> str:
        return f"{self.prefix}..."

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
