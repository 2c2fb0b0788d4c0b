"""The five runtimes through the real stack: each one's file, command and image (issue 8).

isol8 runs python (.py), node (.mjs, or .cjs with fileExtension), bun (.ts),
deno (.mts, read/write limited to /sandbox and /tmp) and bash (.sh); `cmd` runs
with bash in whichever image the runtime names.
"""

from __future__ import annotations

import pytest

from tests.conftest import run

pytestmark = pytest.mark.stack

RUNTIMES = ["python", "node", "bash", "bun", "deno"]

HELLO = {
    "python": 'print("hello world")',
    "node": 'console.log("hello world")',
    "bash": 'echo "hello world"',
    "bun": 'console.log("hello world")',
    "deno": 'console.log("hello world")',
}

# Each reads all of stdin and prints it upper-cased.
STDIN_ECHO = {
    "python": "import sys\nprint(sys.stdin.read().upper())",
    "node": (
        "const chunks = [];\n"
        "for await (const chunk of process.stdin) chunks.push(chunk);\n"
        "console.log(Buffer.concat(chunks).toString().toUpperCase());"
    ),
    "bash": "tr '[:lower:]' '[:upper:]'",
    "bun": "const text: string = await Bun.stdin.text();\nconsole.log(text.toUpperCase());",
    "deno": (
        "const text: string = await new Response(Deno.stdin.readable).text();\n"
        "console.log(text.toUpperCase());"
    ),
}

# Proves the program ran under the runtime it asked for, not another one.
IDENTITY = {
    "python": "import sys\nprint('python', sys.version_info.major)",
    "node": (
        'console.log(typeof Bun === "undefined" && typeof Deno === "undefined" ? "node" : "not node",'
        ' process.versions.node.split(".")[0])'
    ),
    "bash": 'echo bash "${BASH_VERSINFO[0]}"',
    "bun": 'console.log(typeof Bun === "object" ? "bun" : "not bun", Bun.version.split(".")[0])',
    "deno": 'console.log(typeof Deno === "object" ? "deno" : "not deno", Deno.version.deno.split(".")[0])',
}

BINARY = {"python": "python3", "node": "node", "bash": "bash", "bun": "bun", "deno": "deno"}

DENO = ["deno", "run", "--allow-read=/sandbox,/tmp", "--allow-write=/sandbox,/tmp", "--allow-env", "--allow-net"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_hello_world(api, runtime):
    body = run(api, {"runtime": runtime, "code": HELLO[runtime]}).json()
    assert (body["exitCode"], body["stdout"], body["stderr"]) == (0, "hello world", ""), body
    assert body["runtime"] == runtime


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_stdin_is_echoed(api, runtime):
    body = run(api, {"runtime": runtime, "code": STDIN_ECHO[runtime], "stdin": "hello\nworld"}).json()
    assert (body["exitCode"], body["stdout"]) == (0, "HELLO\nWORLD"), body


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_runtime_runs_its_own_interpreter(api, runtime):
    body = run(api, {"runtime": runtime, "code": IDENTITY[runtime]}).json()
    assert body["exitCode"] == 0, body
    name, major = body["stdout"].split()
    assert name == runtime
    assert int(major) >= {"python": 3, "node": 22, "bash": 5, "bun": 1, "deno": 2}[runtime]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cmd_runs_with_bash_in_every_image(api, runtime):
    cmd = f'echo "$0 $(id -un) $PWD $(command -v {BINARY[runtime]})"; {BINARY[runtime]} --version'
    body = run(api, {"runtime": runtime, "cmd": cmd}).json()
    assert body["exitCode"] == 0, body
    first, *rest = body["stdout"].splitlines()
    shell, user, cwd, binary = first.split()
    assert (shell, user, cwd) == ("bash", "sandbox", "/sandbox")
    assert binary.endswith("/" + BINARY[runtime])
    assert rest, "the runtime's --version printed nothing"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_program_file_has_the_runtime_extension(api, runtime):
    """isol8 writes /sandbox/main<ext> and runs the runtime's command on it."""
    code = {
        "python": "import os\nprint(sorted(os.listdir('/sandbox')))",
        "node": 'import { readdirSync } from "node:fs";\nconsole.log(JSON.stringify(readdirSync("/sandbox").sort()))',
        "bash": "cd /sandbox && printf '%s\\n' * | paste -sd,",
        "bun": 'import { readdirSync } from "node:fs";\nconsole.log(JSON.stringify(readdirSync("/sandbox").sort()))',
        "deno": 'console.log(JSON.stringify([...Deno.readDirSync("/sandbox")].map((e) => e.name).sort()))',
    }[runtime]
    body = run(api, {"runtime": runtime, "code": code}).json()
    assert body["exitCode"] == 0, body
    expected = {"python": ".py", "node": ".mjs", "bash": ".sh", "bun": ".ts", "deno": ".mts"}[runtime]
    assert f"main{expected}" in body["stdout"], body


def test_node_runs_commonjs_with_the_cjs_extension(api):
    code = (
        'const path = require("path");\n'
        'const { createHash } = require("crypto");\n'
        'const digest = createHash("sha1").update("x").digest("hex");\n'
        "console.log(typeof module, path.basename(__filename), digest.slice(0, 8));"
    )
    body = run(api, {"runtime": "node", "code": code, "fileExtension": ".cjs"}).json()
    assert (body["exitCode"], body["stdout"]) == (0, "object main.cjs 11f6ad8e"), body


def test_node_default_extension_is_an_es_module(api):
    body = run(api, {"runtime": "node", "code": 'require("path")'}).json()
    assert body["exitCode"] != 0
    assert "require is not defined" in body["stderr"]


def test_bun_runs_typescript(api):
    code = (
        "interface Point { x: number; y: number }\n"
        "const p: Point = { x: 1, y: 2 };\n"
        "function sum(a: number, b: number): number { return a + b; }\n"
        "const label = <T,>(value: T): string => `value=${value}`;\n"
        "console.log(label(sum(p.x, p.y)), import.meta.path);\n"
    )
    body = run(api, {"runtime": "bun", "code": code}).json()
    assert (body["exitCode"], body["stdout"], body["stderr"]) == (0, "value=3 /sandbox/main.ts", ""), body


def test_deno_reads_and_writes_inside_sandbox_and_tmp(api):
    code = (
        "const text: string = Deno.readTextFileSync('/sandbox/data/input.txt');\n"
        "Deno.writeTextFileSync('/tmp/copy.txt', text.toUpperCase());\n"
        "Deno.writeTextFileSync('/sandbox/out.txt', Deno.readTextFileSync('/tmp/copy.txt'));\n"
        "console.log(text, Deno.env.get('HOME'), Deno.env.get('DENO_DIR'));\n"
    )
    body = run(api, {
        "runtime": "deno", "code": code,
        "files": {"/sandbox/data/input.txt": "from a file"},
        "outputPaths": ["/sandbox/out.txt"],
    }).json()
    assert (body["exitCode"], body["stdout"]) == (0, "from a file /sandbox /sandbox/.deno"), body
    assert "/sandbox/out.txt" in body["files"]


def test_deno_refuses_to_read_outside_sandbox_and_tmp(api):
    body = run(api, {"runtime": "deno", "code": "console.log(Deno.readTextFileSync('/etc/passwd'));"}).json()
    assert body["exitCode"] != 0
    assert body["stdout"] == ""
    assert "NotCapable" in body["stderr"]
    assert 'Requires read access to "/etc/passwd"' in body["stderr"]


def test_deno_refuses_writes_and_subprocesses_it_was_not_granted(api):
    code = (
        "for (const attempt of [\n"
        "  () => Deno.writeTextFileSync('/opt/x', 'x'),\n"
        "  () => new Deno.Command('id').outputSync(),\n"
        "]) {\n"
        "  try { attempt(); console.log('allowed'); } catch (e) { console.log(e.name); }\n"
        "}\n"
    )
    body = run(api, {"runtime": "deno", "code": code}).json()
    assert (body["exitCode"], body["stdout"].splitlines()) == (0, ["NotCapable", "NotCapable"]), body


def test_deno_has_allow_net_but_the_sandbox_has_no_network(api):
    code = (
        "try {\n"
        "  await fetch('http://1.1.1.1/', { signal: AbortSignal.timeout(5000) });\n"
        "  console.log('reached the network');\n"
        "} catch (e) {\n"
        "  console.log('no network', e.name);\n"
        "}\n"
    )
    body = run(api, {"runtime": "deno", "code": code}).json()
    assert body["exitCode"] == 0, body
    assert body["stdout"].startswith("no network"), body
