"""What a tenant may ask of a run: its limits within the tenant's caps, its runtime, its network, its packages.

A request over a cap is refused (403 policy_denied), never silently lowered.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from isol8_site.errors import PolicyDenied, validation_error
from sandbox.netfilter import EgressPolicy, PatternError, check_patterns, host_verdict, literal_host
from sandbox.runtimes import RUNTIMES
from sandbox.spec import Limits
from tenants.models import Tenant

MIN_MEMORY = 32 * 1024 * 1024
MAX_PACKAGE_NAME = 200


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
        raise PolicyDenied(f"Runtime {request['runtime']!r} is not allowed for this tenant")
    if timeout > tenant.max_timeout_ms:
        raise PolicyDenied(f"timeoutMs {timeout} is above this tenant's cap of {tenant.max_timeout_ms}")
    if memory > tenant.max_memory:
        raise PolicyDenied(f"memoryLimit {memory} bytes is above this tenant's cap of {tenant.max_memory}")
    if memory < MIN_MEMORY:
        raise validation_error(f"options.memoryLimit: must be at least {MIN_MEMORY // 2**20}m")
    if cpu > tenant.max_cpu:
        raise PolicyDenied(f"cpuLimit {cpu} is above this tenant's cap of {tenant.max_cpu}")
    if pids > tenant.max_pids:
        raise PolicyDenied(f"pidsLimit {pids} is above this tenant's cap of {tenant.max_pids}")
    if max_output > tenant.max_output_size:
        raise PolicyDenied(
            f"maxOutputSize {max_output} is above this tenant's cap of {tenant.max_output_size}"
        )
    if network not in tenant.allowed_networks:
        raise PolicyDenied(f"network {network!r} is not allowed for this tenant")
    if network == "host":
        raise PolicyDenied(f"network {network!r} is not available on this server")
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


def resolve_egress(*, tenant: Tenant, options: dict[str, Any], network: str) -> dict[str, Any]:
    """The EgressPolicy of a run on ``network`` as JSON (ExecutionSpec.egress); {} unless it is "filtered".

    The request's networkFilter, the tenant's egress_hosts and caps, the
    server's ports. A whitelist entry naming one host outright (``pypi.org``,
    ``^pypi\\.org$``) that the tenant's egress_hosts do not cover is refused
    now (403) rather than at every connection; other patterns are narrowed
    by the gateway, host by host, when the run connects.
    """
    if network != "filtered":
        return {}
    network_filter = options.get("networkFilter", {})
    tenant_hosts = tuple(tenant.egress_hosts or ())
    try:
        check_patterns(tenant_hosts, name="egress_hosts")
    except PatternError:
        # Edited past the model's clean() (a script, the shell): never a 500 per run.
        raise PolicyDenied("This tenant's egress_hosts are not valid patterns; ask the operator to fix them") from None
    policy = EgressPolicy(
        whitelist=tuple(network_filter.get("whitelist", ())),
        blacklist=tuple(network_filter.get("blacklist", ())),
        tenant_hosts=tenant_hosts,
        ports=tuple(settings.ISOL8_EGRESS_PORTS),
        max_connections=tenant.max_egress_connections,
        max_bytes=tenant.max_egress_bytes,
        bytes_per_second=tenant.egress_bytes_per_second,
        tenant_connections=tenant.max_egress_open,
    )
    if tenant_hosts:
        tenant_only = EgressPolicy(tenant_hosts=tenant_hosts)
        for pattern in policy.whitelist:
            host = literal_host(pattern)
            if host is not None and not host_verdict(tenant_only, host).allowed:
                raise PolicyDenied(
                    f"options.networkFilter.whitelist: host {host!r} is outside this tenant's egress policy"
                )
    # As the row will give it back (lists, not tuples): the spec is the same before and after storing.
    return {name: list(value) if isinstance(value, tuple) else value for name, value in policy.to_json().items()}


def validate_packages(*, runtime: str, packages: list[str]) -> list[str]:
    """installPackages names, checked before anything runs: 400 naming the first bad one; sorted, unique."""
    if not packages:
        return []
    installer = RUNTIMES[runtime].installer
    if installer is None:
        raise validation_error(f"request.installPackages: not supported for the {runtime} runtime")
    if len(packages) > settings.ISOL8_MAX_PACKAGES:
        raise validation_error(f"request.installPackages: at most {settings.ISOL8_MAX_PACKAGES} packages")
    for name in packages:
        if len(name) > MAX_PACKAGE_NAME or not installer.name_pattern.match(name):
            raise validation_error(f"request.installPackages: {name!r} is not a valid {runtime} package name")
    return sorted(set(packages))


def check_installs_allowed(*, tenant: Tenant, packages: list[str]) -> None:
    if packages and not tenant.allow_installs:
        raise PolicyDenied("installPackages is not allowed for this tenant")
