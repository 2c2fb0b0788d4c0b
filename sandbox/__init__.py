"""The sandbox engine: runs code in hardened Docker containers, a plain library without Django.

It owns the runtime registry (runtimes.py: the one list), the request and
result types (spec.py), the only ``import docker`` (dockerapi.py), the
launcher's framing (protocol.py), hardening and the Sandbox object
(containers.py), the warm pool (pool.py), running a request and collecting its
output (run.py), package installs and their cache (packages.py), image builds
(images.py) and the installers' egress proxy (egress.py). Its host application
configures it once with a SandboxConfig (config.py).

It imports only the standard library, the Docker SDK and itself: no Django,
Redis, Celery or any other isol8 package. The web side may import its data
modules (spec, runtimes, config, errors), which import no Docker; only the
worker drives the rest.
"""
