"""The egress proxy: the only way out of the internal network that package installers use.

The network ``isol8-egress`` is ``internal`` (Docker gives it no route out).
Each worker host runs one proxy container on it and on the default bridge; it
lets CONNECT through only to the hosts of ISOL8_EGRESS_ALLOW
(images/common/isol8_egress_proxy.py). User code never runs on that network.
"""

from __future__ import annotations

import threading

from sandbox import dockerapi
from sandbox.config import current
from sandbox.containers import (
    EGRESS_NETWORK,
    KEEPALIVE_USER,
    LABEL_HOST,
    LABEL_MANAGED,
    LABEL_ROLE,
    list_managed,
    seccomp_profile,
)
from sandbox.images import image_name

PROXY_ALIAS = "isol8-proxy"
PROXY_PORT = 3128
PROXY_ROLE = "egress-proxy"
_lock = threading.Lock()


def egress_proxy_url() -> str:
    return f"http://{PROXY_ALIAS}:{PROXY_PORT}"


def ensure_egress() -> str:
    """The internal egress network and this host's allow-list proxy on it; the proxy's container id."""
    cfg = current()
    with _lock:
        network = dockerapi.ensure_network(EGRESS_NETWORK, internal=True, labels={LABEL_MANAGED: "true"})
        running = list_managed(host=cfg.host, role=PROXY_ROLE)
        alive = [c for c in running if c.status == "running"]
        for stale in running:
            if stale not in alive:
                dockerapi.remove_container(stale.id)
        if alive:
            return alive[0].id
        proxy = dockerapi.create_container({
            "image": image_name("python"),
            "command": ["python3", "-I", "/opt/isol8/isol8_egress_proxy.py"],
            "user": KEEPALIVE_USER,
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges", f"seccomp={seccomp_profile()}"],
            "mem_limit": 256 * 1024 * 1024,
            "pids_limit": 64,
            "environment": {"ISOL8_EGRESS_ALLOW": ",".join(cfg.egress_allow), "ISOL8_EGRESS_PORT": str(PROXY_PORT)},
            "labels": {LABEL_MANAGED: "true", LABEL_HOST: cfg.host, LABEL_ROLE: PROXY_ROLE},
            "detach": True,
        })
        dockerapi.connect(network, proxy, aliases=[PROXY_ALIAS])
        dockerapi.start_container(proxy)
        return proxy
