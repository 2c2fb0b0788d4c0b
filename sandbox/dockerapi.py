"""The Docker engine, through the Docker SDK: the only module that imports ``docker``.

Every SDK call the engine makes is a function here, and every SDK failure
leaves as one of the engine's errors (sandbox/errors.py), with the engine's
own wording logged and a sentence for the client: the engine unreachable is
DockerUnavailableError, a missing image ImageMissingError, anything else the
engine refuses SandboxError. Programming errors are not caught.

A client per thread: requests sessions are not meant to be shared.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO, Any

import docker
import docker.errors
import docker.types
import requests

from sandbox.errors import DockerUnavailableError, ImageMissingError, SandboxError

logger = logging.getLogger(__name__)
_local = threading.local()


def client() -> docker.DockerClient:
    existing = getattr(_local, "client", None)
    if existing is None:
        existing = _local.client = docker.from_env(timeout=120)
    return existing


@contextmanager
def translated(what: str) -> Iterator[None]:
    """SDK failures inside the block become the engine's errors (``what``: for the log)."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageMissingError(f"a sandbox image is missing ({what}): run `python manage.py build_images`") from exc
    except docker.errors.APIError as exc:
        logger.error("Docker refused %s: %s", what, exc.explanation or exc)
        raise SandboxError(f"the Docker engine refused to {what} (see the worker's log)") from exc
    except (requests.ConnectionError, requests.Timeout, docker.errors.DockerException) as exc:
        logger.error("Docker is not reachable (%s): %s", what, exc)
        raise DockerUnavailableError("Docker is not reachable from the worker; try again shortly") from exc


def ping() -> bool:
    """Does the engine answer within a few seconds? (A client of its own: a heartbeat must not hang.)"""
    try:
        pinger = getattr(_local, "pinger", None)
        if pinger is None:
            pinger = _local.pinger = docker.from_env(timeout=3)
        return bool(pinger.ping())
    except (requests.RequestException, docker.errors.DockerException):
        return False


def ulimit(name: str, value: int) -> Any:
    return docker.types.Ulimit(name=name, soft=value, hard=value)


def no_logs() -> Any:
    return docker.types.LogConfig(type="none")


# ---------------------------------------------------------------- containers


def create_container(config: dict[str, Any]) -> str:
    with translated("create the sandbox"):
        return str(client().containers.create(**config).id)


def start_container(container_id: str) -> None:
    with translated("start the sandbox"):
        client().api.start(container_id)


def _raw(wrapper: Any) -> socket.socket:
    # docker-py hands back a SocketIO around the hijacked connection.
    raw: socket.socket = getattr(wrapper, "_sock", wrapper)
    return raw


def attach(container_id: str) -> tuple[socket.socket, Any]:
    """The container's attached stdin/stdout/stderr: (the raw socket, the object that keeps it open)."""
    with translated("attach to the sandbox"):
        wrapper = client().api.attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
    return _raw(wrapper), wrapper


def exec_attach(container_id: str, argv: list[str], *, user: str, workdir: str) -> tuple[socket.socket, Any]:
    """A ``docker exec`` of ``argv``, attached: (the raw socket, the object that keeps it open)."""
    with translated("run docker exec in the sandbox"):
        api = client().api
        exec_id = api.exec_create(container_id, argv, stdin=True, stdout=True, stderr=True, user=user,
                                  workdir=workdir)["Id"]
        wrapper = api.exec_start(exec_id, socket=True)
    return _raw(wrapper), wrapper


def remove_container(container_id: str) -> None:
    """Remove a container, whatever state it is in; gone already is fine."""
    try:
        client().api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: removal already in progress
            logger.warning("removing container %s failed: %s", container_id[:12], exc)
    except (requests.RequestException, docker.errors.DockerException) as exc:
        logger.warning("removing container %s failed: Docker not reachable: %s", container_id[:12], exc)


def inspect_container(container_id: str) -> dict[str, Any] | None:
    """``docker inspect``, or None when there is no such container."""
    with translated("inspect a container"):
        try:
            return dict(client().api.inspect_container(container_id))
        except docker.errors.NotFound:
            return None


def list_containers(label_filters: list[str]) -> list[dict[str, Any]]:
    with translated("list containers"):
        return list(client().api.containers(all=True, filters={"label": label_filters}))


def container_cpu_ns(container_id: str) -> int | None:
    """CPU time the container has used so far (ns), from the engine; None when it cannot say."""
    try:
        stats = client().api.stats(container_id, stream=False, one_shot=True)
        return int(stats["cpu_stats"]["cpu_usage"]["total_usage"])
    except (docker.errors.DockerException, requests.RequestException, KeyError, TypeError, ValueError):
        return None


# Docker 20.10 answers a stats request about a second after it is made (its collector
# samples once a second), however small the container: read many at once, or a host
# with a hundred sessions takes a hundred seconds to meter them.
STATS_PARALLELISM = 16
_stats_pool: ThreadPoolExecutor | None = None
_stats_pool_lock = threading.Lock()


def containers_cpu_ns(container_ids: Iterable[str]) -> dict[str, int | None]:
    """``container_cpu_ns`` of each container, read concurrently (a pool of threads that keep their clients)."""
    global _stats_pool
    ids = list(container_ids)
    if len(ids) <= 1:
        return {container_id: container_cpu_ns(container_id) for container_id in ids}
    with _stats_pool_lock:
        if _stats_pool is None:
            _stats_pool = ThreadPoolExecutor(max_workers=STATS_PARALLELISM, thread_name_prefix="docker-stats")
        pool = _stats_pool
    return dict(zip(ids, pool.map(container_cpu_ns, ids), strict=True))


# -------------------------------------------------------------------- images


def image_labels(name: str) -> dict[str, str] | None:
    """An image's labels, or None when it is not on this engine."""
    with translated("look up an image"):
        try:
            return dict(client().images.get(name).labels or {})
        except docker.errors.ImageNotFound:
            return None


def pull_image(name: str) -> None:
    with translated(f"pull {name}"):
        client().images.pull(name)


def import_image(stream: IO[bytes], *, repository: str, tag: str) -> None:
    with translated(f"import {repository}:{tag}"):
        client().api.import_image_from_stream(stream, repository=repository, tag=tag)


def build_image(*, context: str, dockerfile: str, tag: str, buildargs: dict[str, str],
                labels: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Build, yielding the engine's progress records (a record with ``error`` means it failed)."""
    with translated(f"build {tag}"):
        yield from client().api.build(path=context, dockerfile=dockerfile, tag=tag, buildargs=buildargs,
                                      labels=labels, rm=True, forcerm=True, decode=True)


def list_images(repository: str, *, label: str) -> list[tuple[str, list[str]]]:
    """(id, tags) of the images of ``repository`` carrying ``label``."""
    with translated("list images"):
        return [(image.id, list(image.tags)) for image in client().images.list(name=repository,
                                                                                 filters={"label": label})]


def remove_image(image_id: str) -> bool:
    """Remove an image; False when it is in use (or otherwise refused)."""
    try:
        client().images.remove(image_id)
        return True
    except docker.errors.APIError:
        return False


# ------------------------------------------------------------------ networks


def ensure_network(name: str, *, internal: bool, labels: dict[str, str]) -> Any:
    with translated(f"set up the network {name}"):
        found = [n for n in client().networks.list(names=[name]) if n.name == name]
        if found:
            return found[0]
        return client().networks.create(name, driver="bridge", internal=internal, labels=labels)


def connect(network: Any, container_id: str, *, aliases: list[str]) -> None:
    with translated("connect a container to its network"):
        network.connect(container_id, aliases=aliases)
