"""Webhooks: an execution's result POSTed to its ``callbackUrl`` when it ends, signed, retried, SSRF-safe.

Where a callback may go is the tenant's decision (``Tenant.callback_hosts``,
edited in the admin) and the network's: whatever the list says, the host must
resolve only to public addresses (never private, loopback, link-local such as
the cloud metadata address, multicast or reserved ones; loopback only with
ISOL8_WEBHOOK_ALLOW_LOOPBACK). It is checked when the request is submitted
(403 there) and again on every delivery, and the delivery connects to the
address that passed the check (no second DNS lookup a rebinding server could
answer differently). Redirects are not followed: a 3xx is a failed attempt.

The body is the result object of POST /execute plus ``batchId``. It is signed
as ``Isol8-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>``
with the tenant's webhook secret (README has a verification snippet).
Deliveries run in the workers from their own queue; each attempt is a
WebhookAttempt row (shown in the admin).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import urllib3
from django.conf import settings
from django.utils import timezone

from executions.models import FINISHED, Execution, WebhookAttempt
from executions.results import result_payload
from isol8_site.errors import PolicyDenied, validation_error
from tenants.models import Tenant

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Isol8-Signature"
MAX_URL_LENGTH = 2000
USER_AGENT = "isol8-webhook/1"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def host_allowed(host: str, patterns: list[str]) -> bool:
    """``host`` is one of the tenant's patterns: an exact name, or ``*.example.com`` for its subdomains."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = str(pattern).lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def address_allowed(address: str) -> bool:
    """A public unicast address (or loopback, when the setting allows it)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return bool(settings.ISOL8_WEBHOOK_ALLOW_LOOPBACK)
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to; all of them must pass address_allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise validation_error(f"callbackUrl: cannot resolve {host!r}") from exc
    return sorted({str(info[4][0]) for info in infos})


def check_callback_url(*, tenant: Tenant, url: str) -> list[str]:
    """Refuse a callbackUrl this tenant may not use (400 malformed, 403 not allowed); its checked addresses."""
    if len(url) > MAX_URL_LENGTH:
        raise validation_error(f"callbackUrl: at most {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise validation_error("callbackUrl: must be an http:// or https:// URL with a host name")
    if parts.username or parts.password:
        raise validation_error("callbackUrl: must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise validation_error("callbackUrl: the port is not a number from 1 to 65535") from exc
    if not tenant.webhook_secret:
        raise PolicyDenied("callbackUrl: this tenant has no webhook secret yet (admin: Tenants, "
                           "action \"Set a new webhook secret\")")
    if not host_allowed(parts.hostname, list(tenant.callback_hosts or [])):
        raise PolicyDenied(f"callbackUrl: {parts.hostname!r} is not one of this tenant's callback hosts")
    addresses = resolve(parts.hostname, port)
    refused = [a for a in addresses if not address_allowed(a)]
    if refused or not addresses:
        raise PolicyDenied(f"callbackUrl: {parts.hostname!r} resolves to an address callbacks may not reach "
                           "(private, loopback, link-local or reserved)")
    return addresses


def webhook_body(execution: Execution) -> bytes:
    payload = result_payload(execution)
    payload["batchId"] = str(execution.batch_id) if execution.batch_id else None
    return json.dumps(payload, separators=(",", ":")).encode()


def _post(url: str, address: str, body: bytes, headers: dict[str, str]) -> int:
    """POST ``body`` to ``url`` over a connection to ``address`` (checked), certificate checked for the host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    timeout = urllib3.Timeout(total=settings.ISOL8_WEBHOOK_TIMEOUT)
    pool: urllib3.HTTPConnectionPool
    if parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address, port, timeout=timeout, retries=False, server_hostname=host, assert_hostname=host,
            cert_reqs="CERT_REQUIRED",
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default_port = port == (443 if parts.scheme == "https" else 80)
    try:
        response = pool.urlopen(
            "POST", path, body=body, redirect=False, assert_same_host=False,
            headers={**headers, "Host": host if default_port else f"{host}:{port}"},
        )
        return int(response.status)
    finally:
        pool.close()


def deliver(*, execution_id: str, attempt: int) -> float | None:
    """One delivery attempt; the delay before the next one, or None when done (delivered or given up)."""
    execution = Execution.objects.select_related("tenant").filter(pk=execution_id).first()
    if execution is None or not execution.callback_url or execution.status not in FINISHED:
        return None
    started = time.monotonic()
    status_code: int | None = None
    error = ""
    try:
        addresses = check_callback_url(tenant=execution.tenant, url=execution.callback_url)
        body = webhook_body(execution)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(execution.tenant.webhook_secret, int(time.time()), body),
            "Isol8-Execution-Id": str(execution.pk),
            "Isol8-Delivery-Attempt": str(attempt),
        }
        status_code = _post(execution.callback_url, addresses[0], body, headers)
        if not 200 <= status_code < 300:
            error = f"the receiver answered {status_code}"
    except Exception as exc:  # noqa: BLE001 - every failure is a recorded attempt, retried
        error = getattr(exc, "message", None) or f"{type(exc).__name__}: could not deliver"
        logger.info("webhook of %s, attempt %d: %s", execution_id, attempt, exc)
    delivered = not error
    WebhookAttempt.objects.create(
        execution=execution, attempt=attempt, status_code=status_code, error=error[:500],
        duration_ms=int((time.monotonic() - started) * 1000), delivered=delivered,
    )
    if delivered or attempt >= settings.ISOL8_WEBHOOK_MAX_ATTEMPTS:
        return None
    delay = settings.ISOL8_WEBHOOK_BACKOFF_SECONDS * 2 ** (attempt - 1)
    ended = execution.finished_at or timezone.now()
    if timezone.now() + timedelta(seconds=delay) > ended + timedelta(seconds=settings.ISOL8_WEBHOOK_RETRY_SECONDS):
        return None
    return float(delay)
