"""POST /execute through the real stack: outcomes of user code (api.md "Execute result")."""

from __future__ import annotations

import base64
import time

import pytest
from django.conf import settings

from executions.models import Execution
from sandbox import containers
from tests.conftest import run

pytestmark = pytest.mark.stack


def test_exit_code_and_stderr_are_reported(api):
    code = "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)"
    body = run(api, {"runtime": "python", "code": code}).json()
    assert body["exitCode"] == 3
    assert body["stdout"] == "out"
    assert body["stderr"] == "err"
    assert body["status"] == "ok"
    assert body["timedOut"] is False


def test_result_has_the_isol8_fields(api):
    body = run(api, {"runtime": "bash", "code": "echo hi"}).json()
    for name in ("stdout", "stderr", "exitCode", "durationMs", "truncated", "executionId",
                 "runtime", "timestamp", "status", "timedOut"):
        assert name in body
    assert "files" not in body  # only when outputPaths was given


def test_stdin_is_piped_to_the_program(api):
    body = run(api, {"runtime": "python", "code": "import sys; print(sys.stdin.read().upper())",
                     "stdin": "hello\nworld"}).json()
    assert body["stdout"] == "HELLO\nWORLD"


def test_env_is_added_to_the_environment(api):
    body = run(api, {"runtime": "bash", "code": 'echo "$GREETING $USER"', "env": {"GREETING": "hi"}}).json()
    assert body["stdout"] == "hi sandbox"


def test_cmd_runs_with_bash(api):
    body = run(api, {"runtime": "python", "cmd": "echo $0; python3 -c 'print(2)'"}).json()
    assert body["stdout"].splitlines() == ["bash", "2"]


def test_files_are_written_and_output_paths_come_back_binary_safe(api):
    code = (
        "data = open('/sandbox/in/data.txt').read()\n"
        "open('/sandbox/out.bin', 'wb').write(bytes(range(256)))\n"
        "open('/tmp/t.txt', 'w').write(data.upper())\n"
        "print(open('notes.md').read())\n"
    )
    body = run(api, {
        "runtime": "python", "code": code,
        "files": {"/sandbox/in/data.txt": "abc", "notes.md": "relative to /sandbox"},
        "outputPaths": ["/sandbox/out.bin", "/tmp/t.txt", "/sandbox/missing.txt"],
    }).json()
    assert body["stdout"] == "relative to /sandbox"
    assert base64.b64decode(body["files"]["/sandbox/out.bin"]) == bytes(range(256))
    assert base64.b64decode(body["files"]["/tmp/t.txt"]) == b"ABC"
    assert "/sandbox/missing.txt" not in body["files"]


def test_timeout_kills_the_whole_tree_and_keeps_partial_output(api, stack):
    code = (
        "import subprocess, time\n"
        "subprocess.Popen(['setsid', 'sleep', '1000'])\n"
        "print('before', flush=True)\n"
        "time.sleep(100)\n"
    )
    started = time.monotonic()
    body = run(api, {"runtime": "python", "code": code, "timeoutMs": 1500}).json()
    assert time.monotonic() - started < 15
    assert body["exitCode"] == 137
    assert body["timedOut"] is True
    assert body["status"] == "timeout"
    assert body["stdout"] == "before"
    assert body["stderr"].endswith("--- EXECUTION TIMED OUT ---")
    # A container whose run timed out is destroyed, with the setsid child in it.
    container_id = Execution.objects.get(pk=body["executionId"]).container_id
    assert container_id
    deadline = time.monotonic() + 10
    while containers.container_running(container_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not containers.container_running(container_id)


def test_oom_is_reported_as_status_oom(api):
    code = "x = bytearray(400 * 1024 * 1024)\nx[::4096] = b'1' * len(x[::4096])\nprint('survived')"
    body = run(api, {"runtime": "python", "code": code}, {"memoryLimit": "128m"}).json()
    assert body["exitCode"] == 137
    assert body["status"] == "oom"
    assert "survived" not in body["stdout"]


def test_output_over_max_output_size_is_truncated_with_marker(api):
    body = run(api, {"runtime": "python", "code": "print('x' * 5000)"}, {"maxOutputSize": 1000}).json()
    assert body["truncated"] is True
    assert body["stdout"].startswith("x" * 1000)
    assert body["stdout"].endswith("--- OUTPUT TRUNCATED (5001 bytes, limit: 1000) ---")


def test_stderr_truncation_also_sets_truncated(api):
    code = "import sys; sys.stderr.write('e' * 3000)"
    body = run(api, {"runtime": "python", "code": code}, {"maxOutputSize": 100}).json()
    assert body["truncated"] is True
    assert "OUTPUT TRUNCATED (3000 bytes, limit: 100)" in body["stderr"]


def test_secrets_are_masked_in_stdout_stderr_and_history(api):
    code = "import os, sys\nprint(os.environ['TOKEN'])\nprint('x' + os.environ['TOKEN'] + 'y', file=sys.stderr)"
    body = run(api, {"runtime": "python", "code": code}, {"secrets": {"TOKEN": "s3cr3t-value"}}).json()
    assert body["stdout"] == "***"
    assert body["stderr"] == "x***y"
    row = Execution.objects.get(pk=body["executionId"])
    assert "s3cr3t-value" not in row.stdout + row.stderr + str(row.request)


def test_trailing_whitespace_is_trimmed_but_history_keeps_it(api):
    body = run(api, {"runtime": "bash", "code": "printf '  a  \\n\\n'"}).json()
    assert body["stdout"] == "  a"
    assert Execution.objects.get(pk=body["executionId"]).stdout == "  a  \n\n"


def test_a_run_leaves_nothing_for_the_next_one(api):
    first = run(api, {"runtime": "bash", "code": (
        "echo secret > /sandbox/left.txt; echo t > /tmp/left.txt; "
        "(setsid sleep 600 &) ; export LEAK=1; echo started")}).json()
    assert first["stdout"] == "started"
    second = run(api, {"runtime": "bash", "code": (
        "ls -A /sandbox /tmp; ps -eo user=,comm= | grep -c '^sandbox.*sleep' ; echo \"leak=${LEAK:-}\"")}).json()
    lines = second["stdout"].splitlines()
    assert "left.txt" not in second["stdout"]
    assert "0" in lines
    assert "leak=" in lines


def test_code_runs_unprivileged_with_no_capabilities(api):
    code = (
        "import os\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
        "print(os.getuid(), os.getgid(), status['CapEff'].strip(), status['CapPrm'].strip(),"
        " status['CapInh'].strip(), status['CapAmb'].strip(), status['CapBnd'].strip(),"
        " status['NoNewPrivs'].strip(), status['Seccomp'].strip())\n"
    )
    body = run(api, {"runtime": "python", "code": code}).json()
    uid, gid, *rest = body["stdout"].split()
    # A uid of this sandbox's own, in the sandbox range; every capability set empty, the bounding set too.
    assert uid == gid and settings.ISOL8_SANDBOX_UID_BASE <= int(uid) < settings.ISOL8_SANDBOX_UID_BASE + 65536
    assert rest == ["0000000000000000"] * 5 + ["1", "2"]


def test_code_has_no_network(api):
    code = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 80), timeout=2)\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('blocked', exc.errno)\n"
    )
    body = run(api, {"runtime": "python", "code": code}).json()
    assert body["stdout"].startswith("blocked")


def test_container_of_a_run_has_every_hardening_control(api, stack, tenant):
    body = run(api, {"runtime": "python", "code": "print(1)"}).json()
    container_id = Execution.objects.get(pk=body["executionId"]).container_id
    attrs = containers.container_attrs(container_id)
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert "noexec" in host["Tmpfs"]["/tmp"] and "nr_inodes" in host["Tmpfs"]["/tmp"]
    uid = attrs["Config"]["Labels"]["isol8.uid"]
    assert f"uid={uid}" in host["Tmpfs"]["/sandbox"] and "nosuid" in host["Tmpfs"]["/sandbox"]
    assert host["Memory"] == 512 * 1024 * 1024
    assert host["MemorySwap"] == host["Memory"]
    assert host["PidsLimit"] == 64
    # tini from the image is PID 1: no init binary (or any other host file) is mounted in.
    assert not host["Init"] and attrs["Config"]["Cmd"][0] == "/usr/bin/tini"
    assert [m for m in attrs["Mounts"] if m.get("Type") == "bind"] == []
    assert host["NanoCpus"] == 1_000_000_000
    assert host["CapDrop"] == ["ALL"]
    assert set(host["CapAdd"] or []) <= {"SETUID", "SETGID", "SETPCAP"}  # only the launcher's, see sandbox.py
    assert "no-new-privileges" in host["SecurityOpt"]
    seccomp = next(o for o in host["SecurityOpt"] if o.startswith("seccomp="))
    assert "io_uring_setup" not in seccomp and '"ptrace"' not in seccomp
    assert host["CgroupnsMode"] == "private"
    assert host["IpcMode"] == "private"
    assert host["ShmSize"] > 0
    assert {u["Name"] for u in host["Ulimits"]} == {"nofile", "fsize", "core", "msgqueue"}
    assert not host.get("Binds") and not host.get("Devices") and not host["Privileged"]
    assert host["PidMode"] == "" and host["UsernsMode"] == ""
    labels = attrs["Config"]["Labels"]
    assert labels["isol8.managed"] == "true"
    assert labels["isol8.host"] == stack.env["ISOL8_WORKER_HOST"]
    # A warm container is labelled before its first tenant is known.
    assert labels["isol8.tenant"] in (tenant.slug, "unassigned")
    # Reused for the tenant's later runs: no execution's name on it for life.
    assert "isol8.execution" not in labels and labels.get("isol8.pool") in ("warm", "tenant")
    assert attrs["Config"]["User"] in ("0:0", "65534:65534")


def test_history_keeps_the_run(api, tenant):
    body = run(api, {"runtime": "python", "code": "print('kept')"}).json()
    row = Execution.objects.get(pk=body["executionId"])
    assert row.tenant == tenant
    assert row.status == "ok" and row.exit_code == 0
    assert row.stdout == "kept\n"
    assert row.started_at and row.finished_at and row.created_at <= row.started_at <= row.finished_at
    assert row.worker_host and row.container_id and row.duration_ms is not None


def test_python_runs_exactly_like_python3_script(api):
    """The launcher's pre-started interpreter must be indistinguishable from `python3 file`."""
    code = (
        "import sys, os, atexit\n"
        "atexit.register(lambda: print('atexit'))\n"
        "print(__name__, sys.argv, sys.path[0], os.getcwd(), sys.flags.hash_randomization)\n"
    )
    body = run(api, {"runtime": "python", "code": code}).json()
    assert body["stdout"] == "__main__ ['/sandbox/main.py'] /sandbox /sandbox 1\natexit"


def test_python_traceback_shows_only_the_users_frames(api):
    body = run(api, {"runtime": "python", "code": "def f():\n    raise ValueError('boom')\nf()\n"}).json()
    assert body["exitCode"] == 1
    assert body["stderr"].splitlines() == [
        "Traceback (most recent call last):",
        '  File "/sandbox/main.py", line 3, in <module>',
        "    f()",
        '  File "/sandbox/main.py", line 2, in f',
        "    raise ValueError('boom')",
        "ValueError: boom",
    ]
    syntax = run(api, {"runtime": "python", "code": "print((\n"}).json()
    assert syntax["exitCode"] == 1
    assert syntax["stderr"].startswith('  File "/sandbox/main.py", line 1')
    assert syntax["stderr"].endswith("SyntaxError: '(' was never closed")
    message = run(api, {"runtime": "python", "code": "import sys; sys.exit('bye')"}).json()
    assert (message["exitCode"], message["stderr"]) == (1, "bye")


def test_forked_python_runs_match_a_fresh_interpreter(api):
    """Python runs are forked from a pristine server (launcher mode): the same modules
    as a fresh `python3`, the code user's own /proc entries, and nothing carried over."""
    code = (
        "import os, sys\n"
        "print(sorted(sys.modules))\n"
        "print(b'HOME=/sandbox' in open('/proc/self/environ', 'rb').read(), os.getuid(), os.getgid())\n"
        "print(hasattr(sys, 'isol8_left'), hasattr(os, 'isol8_left'))\n"
        "sys.isol8_left = os.isol8_left = True\n"
    )
    forked = run(api, {"runtime": "python", "code": code}).json()
    again = run(api, {"runtime": "python", "code": code}).json()
    # A start-up variable the fork server was not started with: a new python3 serves it.
    fresh = run(api, {"runtime": "python", "code": code, "env": {"PYTHONHASHSEED": "random"}}).json()
    assert forked["exitCode"] == 0, forked
    assert forked["stdout"] == again["stdout"] == fresh["stdout"]
    environ_ok, uid, gid = forked["stdout"].splitlines()[1].split()
    assert environ_ok == "True" and uid == gid and int(uid) >= settings.ISOL8_SANDBOX_UID_BASE
    assert forked["stdout"].splitlines()[2] == "False False"


def test_python_runs_in_a_session_are_new_processes(api):
    code = "import os, sys\nprint(os.getpid(), hasattr(sys, 'isol8_left'))\nsys.isol8_left = True\n"
    outputs = [run(api, {"runtime": "python", "code": code}, sessionId="fresh-procs").json()["stdout"]
               for _ in range(3)]
    api.delete("/session/fresh-procs")
    pids = [line.split()[0] for line in outputs]
    assert len(set(pids)) == 3, outputs
    assert all(line.endswith("False") for line in outputs), outputs


def test_python_startup_variables_from_env_take_effect(api):
    body = run(api, {"runtime": "python", "code": "import sys; print(sys.flags.hash_randomization)",
                     "env": {"PYTHONHASHSEED": "0"}}).json()
    assert body["stdout"] == "0"


def test_code_cannot_signal_or_read_the_processes_that_tend_it(api):
    """The launcher (root) or keep-alive (nobody), docker-init: out of the code's reach."""
    code = (
        "import os, signal\n"
        "others = []\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        uid = [l for l in open(f'/proc/{pid}/status') if l.startswith('Uid:')][0].split()[1]\n"
        "    except OSError:\n"
        "        continue\n"
        "    if uid != str(os.getuid()):\n"
        "        others.append(int(pid))\n"
        "outcomes = set()\n"
        "for pid in others:\n"
        "    for attempt in (lambda: os.kill(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGSTOP),\n"
        "                    lambda: open(f'/proc/{pid}/environ', 'rb').read(),\n"
        "                    lambda: open(f'/proc/{pid}/mem', 'rb').read(1),\n"
        "                    lambda: os.listdir(f'/proc/{pid}/fd')):\n"
        "        try:\n"
        "            attempt()\n"
        "            outcomes.add('allowed')\n"
        "        except PermissionError:\n"
        "            outcomes.add('denied')\n"
        "print(len(others) > 0, sorted(outcomes))\n"
    )
    body = run(api, {"runtime": "python", "code": code}).json()
    assert body["stdout"] == "True ['denied']", body
    # And the sandbox still serves the next run normally.
    assert run(api, {"runtime": "python", "code": "print('next')"}).json()["stdout"] == "next"
