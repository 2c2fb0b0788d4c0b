"""ExecutionSpec and Limits: the request's one mapping to the engine, and back from the history row."""

from __future__ import annotations

from sandbox.runtimes import RUNTIME_NAMES, RUNTIMES
from sandbox.spec import NETWORK_MODES, ExecutionSpec, Limits, truncation_marker
from tests.unit.sandbox.conftest import LIMITS, ROOT

REQUEST = {
    "runtime": "python", "code": "print(1)", "stdin": "in", "env": {"A": "1"}, "files": {"a.txt": "x"},
    "outputPaths": ["/sandbox/out"], "fileExtension": ".py", "workdir": "sub", "setupScript": "echo hi",
    "metadata": {"m": "1"}, "installPackages": ["six"],
}


def test_spec_from_request_keeps_every_field():
    spec = ExecutionSpec.from_request(REQUEST, {"secrets": {"TOKEN": "s3cret"}})
    assert (spec.runtime, spec.code, spec.cmd, spec.stdin) == ("python", "print(1)", "", "in")
    assert (spec.env, spec.files, spec.output_paths) == ({"A": "1"}, {"a.txt": "x"}, ["/sandbox/out"])
    assert (spec.file_extension, spec.workdir, spec.setup_script) == (".py", "sub", "echo hi")
    assert (spec.metadata, spec.install_packages, spec.secrets) == ({"m": "1"}, ["six"], {"TOKEN": "s3cret"})


def test_blank_code_and_cmd_become_empty():
    spec = ExecutionSpec.from_request({"runtime": "bash", "code": "  \n", "cmd": " "}, {})
    assert (spec.code, spec.cmd) == ("", "")


def test_stored_spec_names_secrets_but_never_holds_their_values():
    spec = ExecutionSpec.from_request(REQUEST, {"secrets": {"TOKEN": "s3cret"}})
    stored = spec.to_stored()
    assert "s3cret" not in repr(stored)
    assert stored["secretNames"] == ["TOKEN"]


def test_spec_round_trips_through_the_history_row():
    spec = ExecutionSpec.from_request(REQUEST, {"secrets": {"TOKEN": "s3cret"}})
    again = ExecutionSpec.from_stored(
        runtime=spec.runtime, code=spec.code, cmd=spec.cmd, stored=spec.to_stored(), secrets={"TOKEN": "s3cret"}
    )
    assert again == spec


def test_limits_round_trip_and_container_profile_leaves_out_per_run_limits():
    assert Limits.from_json(LIMITS.to_json()) == LIMITS
    other_run = Limits(**{**LIMITS.to_json(), "timeout_ms": 1, "max_output": 2})
    assert other_run.container_profile() == LIMITS.container_profile()
    assert Limits(**{**LIMITS.to_json(), "memory": 1}).container_profile() != LIMITS.container_profile()


def test_truncation_marker_says_how_much_and_the_limit():
    assert truncation_marker(5000, 1024) == "\n\n--- OUTPUT TRUNCATED (5000 bytes, limit: 1024) ---"


def test_the_registry_is_the_one_list_of_runtimes_and_each_has_an_image():
    assert RUNTIME_NAMES == ("python", "node", "bash", "bun", "deno")
    for name in RUNTIME_NAMES:
        assert (ROOT / "images" / name / "Dockerfile").exists(), name
    assert NETWORK_MODES == ("none", "filtered", "host")


def test_package_patterns_accept_registry_names_and_refuse_options_and_urls():
    python = RUNTIMES["python"].installer
    node = RUNTIMES["node"].installer
    deno = RUNTIMES["deno"].installer
    assert python is not None and node is not None and deno is not None
    for good in ("six", "requests==2.32.0", "Django>=4,<6", "zope.interface"):
        assert python.name_pattern.match(good), good
    for bad in ("--index-url=http://evil", "-e .", "git+https://x/y", "../x", "a b"):
        assert not python.name_pattern.match(bad), bad
    assert node.name_pattern.match("@scope/pkg@1.2.3") and not node.name_pattern.match("http://x")
    assert deno.name_pattern.match("npm:chalk@5") and not deno.name_pattern.match("chalk")
    assert RUNTIMES["bash"].installer is None
