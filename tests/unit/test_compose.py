"""docker-compose.yml is a valid Compose file and agrees with the code (issue 19, point 4).

Validated as `docker compose config` would: variables interpolated (with a
complete .env), YAML anchors merged, then checked against the Compose
Specification's JSON schema (vendored in deploy/schema/).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from django.conf import settings

from isol8_site import dispatch

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "DJANGO_SECRET_KEY", "ISOL8_KEY_PEPPER", "ISOL8_API_KEY")
VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class MissingVariableError(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: $$, ${V}, ${V:-default}, ${V-default}, ${V:?error}, ${V?error}."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if present:
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise MissingVariableError(f"{name}: {arg}")
        return ""

    return VARIABLE.sub(one, value)


def compose(env: dict[str, str]) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return interpolate(raw, env)


@pytest.fixture
def config() -> dict[str, Any]:
    return compose({name: f"secret-{name.lower()}" for name in SECRETS})


def test_the_compose_file_is_valid_against_the_compose_specification(config):
    schema = json.loads((ROOT / "deploy" / "schema" / "compose-spec.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_every_secret_is_required():
    for name in SECRETS:
        env = {other: "x" for other in SECRETS if other != name}
        with pytest.raises(MissingVariableError, match=name):
            compose(env)


def test_the_service_image_builds_from_the_sandboxes_base_image_setting(config):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG ISOL8_BASE_IMAGE=(\S+)$", dockerfile, re.M).group(1) == settings.ISOL8_BASE_IMAGE
    assert re.search(r"^FROM \$\{ISOL8_BASE_IMAGE\}$", dockerfile, re.M)
    for name in ("web", "worker", "beat"):
        service = config["services"][name]
        assert service["build"]["args"]["ISOL8_BASE_IMAGE"] == settings.ISOL8_BASE_IMAGE
        assert service["environment"]["ISOL8_BASE_IMAGE"] == settings.ISOL8_BASE_IMAGE


def test_the_worker_consumes_what_dispatch_sends_it(config):
    worker = config["services"]["worker"]
    host = worker["environment"]["ISOL8_WORKER_HOST"]
    queues = re.search(r"-Q (\S+)", worker["command"]).group(1)
    assert queues == dispatch.worker_queues(host).replace(settings.ISOL8_RUN_QUEUE, "isol8.run")
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    # Only the worker holds the Docker socket: the web tier never talks to Docker.
    assert all("docker.sock" not in str(config["services"][name].get("volumes", [])) for name in ("web", "beat"))
