"""Settings and the config file: every bad value stops start-up with its name; good ones become the defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest

from isol8_site.config import ConfigError, parse_config
from sandbox.config import PrebuiltImage
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [({"surprise": 1}, "surprise"), ({"maxConcurrent": 0}, "maxConcurrent"),
     ({"defaults": {"memoryLimit": "lots"}}, "defaults.memoryLimit"),
     ({"cleanup": {"autoPrune": "yes"}}, "cleanup.autoPrune"),
     ({"defaults": {"network": "wide"}}, "defaults.network"), ([], "object")],
)
def test_bad_config_values_are_named(raw, mentions):
    with pytest.raises(ConfigError, match=mentions.replace(".", r"\.")):
        parse_config(raw, source="test")


def test_config_values_become_defaults():
    config = parse_config({"maxConcurrent": 3, "poolSize": 0, "defaults": {"timeoutMs": 1234, "memoryLimit": "1g"},
                           "cleanup": {"autoPrune": False, "maxContainerAgeMs": 5000}}, source="test")
    assert config.max_concurrent == 3 and config.pool_size == 0
    assert config.defaults.timeout_ms == 1234 and config.defaults.memory_limit == 1024**3
    assert config.cleanup.auto_prune is False and config.cleanup.max_container_age_ms == 5000


def test_prebuilt_images_become_the_engines_prebuilt_images():
    config = parse_config({"prebuiltImages": [{"tag": "py-data:1", "runtime": "python", "installPackages": ["six"]}]},
                          source="test")
    assert config.prebuilt_images == (PrebuiltImage(tag="py-data:1", runtime="python", packages=("six",)),)


@pytest.mark.parametrize("entry", [{"tag": "Bad Tag", "runtime": "python"}, {"tag": "x:1", "runtime": "bash"},
                                   {"tag": "x:1", "runtime": "python", "installPackages": "six"}])
def test_bad_prebuilt_images_are_named(entry):
    with pytest.raises(ConfigError, match=r"prebuiltImages\[0\]"):
        parse_config({"prebuiltImages": [entry]}, source="test")


@pytest.mark.parametrize(("name", "value"), [("ISOL8_RUNTIMES", "python,cobol"), ("ISOL8_SANDBOX_MODE", "vm"),
                                             ("ISOL8_POOL_SIZE", "many")])
def test_a_bad_setting_stops_start_up_naming_it(name, value):
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT,
                            env={"DJANGO_SETTINGS_MODULE": "isol8_site.settings", name: value, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and name in result.stderr


def test_the_old_fork_server_setting_name_still_works():
    code = "import django; django.setup(); from django.conf import settings; print(settings.SANDBOX.python_fork_server)"
    for env, expected in (({"ISOL8_PYTHON_ZYGOTE": "0"}, "False"), ({"ISOL8_PYTHON_FORK_SERVER": "0"}, "False"),
                          ({"ISOL8_PYTHON_ZYGOTE": "0", "ISOL8_PYTHON_FORK_SERVER": "1"}, "True"), ({}, "True")):
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                                env={"DJANGO_SETTINGS_MODULE": "isol8_site.settings", "PATH": "/usr/bin:/bin", **env})
        assert result.stdout.strip() == expected, (env, result.stderr)
