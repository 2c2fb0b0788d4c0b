"""installPackages: installs behind the egress proxy, a per-tenant cache, prebuilt images.

An install never happens in the sandbox that runs the code (that one has no
network). A separate, equally hardened installer container on the internal
egress network runs the runtime's installer as its code user, reaching only the
registries the allow-list proxy lets through; its result (the files the
installer wrote under /sandbox) is packed into a tarball, cached per tenant and
package set, and unpacked into the run's sandbox before the code starts.

``prebuiltImages`` (isol8's config) bake package sets into images at build time;
a request whose packages they cover runs in such an image and installs nothing.
Package names are checked before anything starts, by the web side
(executions/policy.py), against the runtimes' patterns (sandbox/runtimes.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Callable

from sandbox.config import current
from sandbox.containers import LABEL_ROLE, LABEL_TENANT, Sandbox, create_sandbox
from sandbox.egress import egress_proxy_url, ensure_egress
from sandbox.errors import InstallError, SandboxError
from sandbox.images import covering_image, image_hash
from sandbox.run import OutputCollector, Publish
from sandbox.runtimes import BASE_ENV, RUNTIMES
from sandbox.spec import ExecutionSpec, Limits

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def set_key(*, runtime: str, packages: list[str]) -> str:
    digest = hashlib.sha256(json.dumps([runtime, image_hash(runtime), packages]).encode())
    return digest.hexdigest()[:24]


def install_limits() -> Limits:
    """Installers get room to work (pip and npm are hungry); they never run user code."""
    return Limits(
        timeout_ms=current().install_timeout_ms,
        memory=1024**3,
        cpu=1.0,
        pids=256,
        max_output=256 * 1024,
        sandbox_size=512 * 1024**2,
        tmp_size=256 * 1024**2,
    )


def prepare_packages(box: Sandbox, *, tenant: str, spec: ExecutionSpec, publish: Publish | None) -> str:
    """Make ``spec``'s packages available in ``box`` before it runs; where they came from.

    "prebuilt:<tag>" (the box runs a prebuilt image covering them; its setup
    script is put before the request's), "cache" (unpacked from this tenant's
    cache, or already there in a session), "install" (installed now), "" (none).
    Raises InstallError.
    """
    if not spec.install_packages:
        return ""
    prebuilt = covering_image(runtime=spec.runtime, packages=spec.install_packages)
    if prebuilt is not None and box.image == prebuilt.tag:
        if prebuilt.setup_script:
            spec.setup_script = f"{prebuilt.setup_script}\n{spec.setup_script}"
        return f"prebuilt:{prebuilt.tag}"
    key = set_key(runtime=spec.runtime, packages=spec.install_packages)
    if key in box.installed:
        return "cache"
    archive, cached = package_archive(
        tenant=tenant,
        runtime=spec.runtime,
        packages=spec.install_packages,
        on_output=(lambda name, text: publish(name, text, "setup")) if publish else None,
    )
    try:
        reply = box.request({"op": "put_tar", "content": base64.b64encode(archive).decode()}, timeout=120)
    except SandboxError as exc:
        raise InstallError(f"Package install failed: {exc}", 1) from exc
    if not reply.get("ok"):
        raise InstallError(f"Package install failed: {reply.get('error')}", 1)
    box.installed.add(key)
    return "cache" if cached else "install"


def package_archive(
    *, tenant: str, runtime: str, packages: list[str], on_output: Callable[[str, str], None] | None = None
) -> tuple[bytes, bool]:
    """The tarball of ``packages`` for ``tenant``: (archive, True when it came from the cache).

    The first request for a set installs it (concurrent ones for the same set
    wait for that install rather than repeating it).
    """
    key = set_key(runtime=runtime, packages=packages)
    path = current().package_cache / tenant / f"{key}.tar.gz"
    if path.exists():
        return path.read_bytes(), True
    with _lock(f"{tenant}/{key}"):
        if path.exists():
            return path.read_bytes(), True
        archive = _install(tenant=tenant, runtime=runtime, packages=packages, on_output=on_output)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(archive)
        partial.rename(path)
        return archive, False


def _install(
    *, tenant: str, runtime: str, packages: list[str], on_output: Callable[[str, str], None] | None
) -> bytes:
    installer = RUNTIMES[runtime].installer
    if installer is None:
        raise InstallError(f"Package install failed: the {runtime} runtime has no installer", 1)
    ensure_egress()
    limits = install_limits()
    box = create_sandbox(
        runtime=runtime, limits=limits, labels={LABEL_TENANT: tenant, LABEL_ROLE: "installer"}, egress=True
    )
    proxy = egress_proxy_url()
    env = {
        **BASE_ENV,
        **installer.env,
        "HTTPS_PROXY": proxy, "https_proxy": proxy, "HTTP_PROXY": proxy, "http_proxy": proxy,
        "NO_PROXY": "", "no_proxy": "",
    }
    collector = OutputCollector(
        secrets=[],
        history_max=limits.max_output,
        publish=(lambda name, text, phase: on_output(name, str(text))) if on_output else None,
    )
    try:
        outcome: dict[str, object] = {}
        request = {
            "op": "run",
            "argv": installer.argv(packages),
            "env": env,
            "cwd": "/sandbox",
            "timeoutMs": limits.timeout_ms,
            "maxOutput": limits.max_output,
            "killLeftovers": True,
        }
        for frame in box.call(request, limits.timeout_ms / 1000 + 30):
            if frame.kind in ("o", "e"):
                collector.feed(frame.kind, frame.payload)
            elif frame.kind == "x":
                outcome = frame.json()
        collector.finish()
        code = int(str(outcome.get("exitCode", 1)))
        if outcome.get("timedOut"):
            raise InstallError("Package install failed (timed out)", 137)
        if code != 0 or "error" in outcome:
            detail = collector.text("e").strip() or str(outcome.get("error", ""))
            raise InstallError(f"Package install failed (exit code {code}): {detail}", code)
        reply = box.request({"op": "get_tar", "paths": list(installer.keeps)}, timeout=120)
        if not reply.get("ok"):
            raise InstallError(f"Package install failed: {reply.get('error')}", 1)
        return base64.b64decode(str(reply["content"]))
    except InstallError:
        raise
    except SandboxError as exc:
        raise InstallError(f"Package install failed: {exc}", 1) from exc
    finally:
        box.destroy()
