"""Egress policy of a filtered run: which hosts and ports, how much, and the verdict on one host.

isol8's semantics: ``whitelist`` and ``blacklist`` are regular expressions
searched (unanchored, case-insensitive) in the host name; the blacklist wins;
an empty whitelist lets any host through that the blacklist does not stop.
On top of that a tenant may have its own host patterns (``tenant_hosts``):
a host must match one of them too, so a request's whitelist can only narrow
the tenant's policy, never widen it.

Patterns are compiled with the ``regex`` module, whose matching takes a
timeout: a pathological pattern (catastrophic backtracking) stops after
MATCH_TIMEOUT seconds and the host is refused, instead of stalling the proxy.
Plain data and pure functions: the web side validates with them, the egress
gateway (sandbox/gateway.py) decides with them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import regex

MAX_PATTERNS = 64
MAX_PATTERN_LENGTH = 256
MATCH_TIMEOUT = 0.05  # seconds per pattern and host; a host name is at most 253 characters
MAX_HOST_LENGTH = 253
_HOST_LABEL = regex.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


class PatternError(ValueError):
    """A host pattern that is not a valid regular expression (the client's 400)."""


@dataclass(frozen=True)
class EgressPolicy:
    """What a filtered run may reach, with its caps. Stored with the execution (``to_json``)."""

    whitelist: tuple[str, ...] = ()
    blacklist: tuple[str, ...] = ()
    tenant_hosts: tuple[str, ...] = ()  # empty: the tenant does not restrict hosts
    ports: tuple[int, ...] = (80, 443)
    max_connections: int = 64  # connections let through per run
    max_bytes: int = 256 * 1024 * 1024  # bytes up + down per run
    bytes_per_second: int = 0  # per run, all its connections together; 0 = unlimited
    tenant_connections: int = 32  # connections open at once per tenant on one host's gateway

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EgressPolicy:
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        for name in ("whitelist", "blacklist", "tenant_hosts", "ports"):
            if name in known:
                known[name] = tuple(known[name])
        return cls(**known)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""  # why a host was refused: blacklisted, not_whitelisted, tenant_policy, ...


@dataclass
class _Compiled:
    whitelist: list[Any] = field(default_factory=list)
    blacklist: list[Any] = field(default_factory=list)
    tenant_hosts: list[Any] = field(default_factory=list)


def check_patterns(patterns: Sequence[str], *, name: str) -> list[str]:
    """The patterns of a request or tenant field, validated; PatternError names the bad one."""
    if len(patterns) > MAX_PATTERNS:
        raise PatternError(f"{name}: at most {MAX_PATTERNS} patterns")
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip():
            raise PatternError(f"{name}: every pattern must be a non-empty string")
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise PatternError(f"{name}: a pattern is longer than {MAX_PATTERN_LENGTH} characters")
        try:
            _compile(pattern)
        except regex.error as exc:
            raise PatternError(f"{name}: {pattern!r} is not a valid regular expression ({exc})") from None
    return list(patterns)


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> Any:
    return regex.compile(pattern, regex.IGNORECASE)


def _compiled(policy: EgressPolicy) -> _Compiled:
    return _Compiled(
        whitelist=[_compile(p) for p in policy.whitelist],
        blacklist=[_compile(p) for p in policy.blacklist],
        tenant_hosts=[_compile(p) for p in policy.tenant_hosts],
    )


def _any_match(patterns: Iterable[Any], host: str) -> bool:
    """Does a pattern match? TimeoutError when one runs out of time (the caller refuses the host)."""
    return any(pattern.search(host, timeout=MATCH_TIMEOUT) for pattern in patterns)


def normalize_host(host: str) -> str | None:
    """A host name as the policy sees it (lower case, no trailing dot), or None when it is not a name."""
    host = host.strip().lower().rstrip(".")
    if not host or len(host) > MAX_HOST_LENGTH:
        return None
    if not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        return None
    return host


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def host_verdict(policy: EgressPolicy, host: str) -> Verdict:
    """May a run under ``policy`` reach ``host`` (a name, already normalized)? Ports are checked apart."""
    compiled = _compiled(policy)
    try:
        if _any_match(compiled.blacklist, host):
            return Verdict(False, "blacklisted")
        if compiled.whitelist and not _any_match(compiled.whitelist, host):
            return Verdict(False, "not_whitelisted")
        if compiled.tenant_hosts and not _any_match(compiled.tenant_hosts, host):
            return Verdict(False, "tenant_policy")
    except TimeoutError:
        return Verdict(False, "pattern_timeout")
    return Verdict(True)


def literal_host(pattern: str) -> str | None:
    """The one host a pattern names when it is a plain (possibly escaped, anchored) host name, else None.

    ``pypi.org``, ``^pypi\\.org$`` and ``files\\.pythonhosted\\.org`` are literal; anything
    with another regex construct is not (the web side can only check literal
    hosts against a tenant's patterns up front; the gateway checks every host).
    """
    text = pattern.removeprefix("^").removesuffix("$").replace("\\.", ".").replace("\\-", "-")
    return normalize_host(text) if "\\" not in text else None


# Never reached through the gateway, whatever a policy says: this host, its private
# networks (Docker's bridges among them), link-local (the cloud metadata service),
# carrier-grade NAT, multicast and the unspecified addresses, in both families.
BLOCKED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "64:ff9b::/96", "64:ff9b:1::/48", "fc00::/7", "fe80::/10", "ff00::/8",
))


def address_allowed(
    address: str,
    *,
    own: frozenset[str] = frozenset(),
    permitted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> bool:
    """May the gateway connect to ``address``? Not to this host (``own``) or a blocked network.

    ``permitted`` networks are allowed even inside a blocked one (an operator's
    internal mirror, ISOL8_EGRESS_PERMIT_NETWORKS); this host's own addresses never are.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if str(ip) in own:
        return False
    if any(ip in network for network in permitted if network.version == ip.version):
        return True
    return not any(ip in network for network in BLOCKED_NETWORKS if network.version == ip.version)
