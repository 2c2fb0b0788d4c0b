"""main.py: the code user's names in passwd and group, and the modes that can run outside a container."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from isol8_launcher import main as launcher_main
from isol8_launcher import relay
from isol8_launcher.main import main, serve, start_relay, write_identity
from isol8_launcher.procs import CodeUser

from sandbox.protocol import encode_request
from tests.unit.launcher.support import parse_frames

PASSWD_BASE = (
    "root:x:0:0:root:/root:/bin/bash\n"
    "sandbox:x:1000:1000::/sandbox:/bin/bash\n"
    "nobody:x:65534:65534::/:/bin/false\n"
)
GROUP_BASE = "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    path = tmp_path / "etc"
    path.mkdir()
    (path / "passwd.base").write_text(PASSWD_BASE)
    (path / "group.base").write_text(GROUP_BASE)
    return path


@pytest.fixture
def identity_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run-isol8"
    path.mkdir()
    return path


def test_the_code_uid_is_named_sandbox_in_place_of_the_images_entry(etc, identity_dir):
    write_identity(3_000_007, 3_000_008, etc=str(etc), identity_dir=str(identity_dir))
    assert (identity_dir / "passwd").read_text().splitlines() == [
        "root:x:0:0:root:/root:/bin/bash",
        "nobody:x:65534:65534::/:/bin/false",
        "sandbox:x:3000007:3000008:isol8 sandbox:/sandbox:/bin/bash",
    ]
    assert (identity_dir / "group").read_text().splitlines() == ["root:x:0:", "nogroup:x:65534:", "sandbox:x:3000008:"]


def test_the_identity_files_are_world_readable_and_replaced_whole(etc, identity_dir):
    write_identity(3_000_007, 3_000_007, etc=str(etc), identity_dir=str(identity_dir))
    assert sorted(p.name for p in identity_dir.iterdir()) == ["group", "passwd"]  # no .new left
    for name in ("passwd", "group"):
        assert (identity_dir / name).stat().st_mode & 0o777 == 0o644


def test_writing_the_identity_again_names_the_new_uid_once(etc, identity_dir):
    write_identity(3_000_007, 3_000_007, etc=str(etc), identity_dir=str(identity_dir))
    write_identity(3_000_009, 3_000_009, etc=str(etc), identity_dir=str(identity_dir))
    entries = [line for line in (identity_dir / "passwd").read_text().splitlines() if line.startswith("sandbox:")]
    assert entries == ["sandbox:x:3000009:3000009:isol8 sandbox:/sandbox:/bin/bash"]


def test_the_base_files_are_left_as_they_were(etc, identity_dir):
    write_identity(3_000_007, 3_000_007, etc=str(etc), identity_dir=str(identity_dir))
    assert (etc / "passwd.base").read_text() == PASSWD_BASE and (etc / "group.base").read_text() == GROUP_BASE


def test_serve_refuses_to_run_as_the_code_user(capsys):
    """serve needs root with --uid naming another user; as the code user it stops before changing anything."""
    assert serve(CodeUser(os.getuid(), os.getgid())) == 2
    assert "serve mode runs as root" in capsys.readouterr().err


@pytest.fixture
def sigpipe() -> Iterator[None]:
    """main() sets SIGPIPE's disposition: put back the test process's."""
    saved = signal.getsignal(signal.SIGPIPE)
    yield
    signal.signal(signal.SIGPIPE, saved)


def test_sigpipe_is_ignored_so_a_program_that_left_its_stdin_unread_cannot_kill_the_launcher(sigpipe, capsys):
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main(["launch.py", "sideways"])
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN


def test_an_unknown_mode_exits_2(sigpipe, capsys):
    assert main(["launch.py", "sideways"]) == 2
    assert "unknown mode sideways" in capsys.readouterr().err


def test_once_mode_answers_one_request_from_stdin_on_stdout(sigpipe, capfdbinary):
    read_fd, write_fd = os.pipe()
    os.write(write_fd, encode_request({"op": "ping", "nonce": "once"}) + encode_request({"op": "ping", "nonce": "2"}))
    os.close(write_fd)
    saved_stdin = os.dup(0)
    try:
        os.dup2(read_fd, 0)
        assert main(["launch.py", "once"]) == 0
    finally:
        os.dup2(saved_stdin, 0)
        os.close(saved_stdin)
        os.close(read_fd)
    (frame,) = parse_frames(capfdbinary.readouterr().out)
    assert frame.kind == "r" and frame.json() == {"pong": "once", "ok": True}


class StandInError(Exception):
    """Raised by the stand-ins of serve and keepalive: main() passed them these arguments."""


@pytest.fixture
def modes(monkeypatch, sigpipe) -> None:
    def stand_in(mode: str):
        def run(user: CodeUser, *, egress: str | None = None) -> int:
            raise StandInError(mode, user.uid, user.gid, egress)

        return run

    monkeypatch.setattr(launcher_main, "serve", stand_in("serve"))
    monkeypatch.setattr(launcher_main, "keepalive", stand_in("keepalive"))


@pytest.mark.parametrize("mode", ["serve", "keepalive"])
def test_serve_and_keepalive_take_the_egress_socket(modes, mode):
    with pytest.raises(StandInError) as started:
        main(["launch.py", mode, "--uid", "3000007", "--egress", "/run/isol8-egress/proxy.sock"])
    assert started.value.args == (mode, 3_000_007, 3_000_007, "/run/isol8-egress/proxy.sock")


@pytest.mark.parametrize("mode", ["serve", "keepalive"])
def test_without_egress_there_is_no_relay_socket(modes, mode):
    with pytest.raises(StandInError) as started:
        main(["launch.py", mode, "--uid", "3000007"])
    assert started.value.args == (mode, 3_000_007, 3_000_007, None)


@pytest.mark.parametrize("args", [["--uid", "3000007", "--egress"], ["--egress", "--uid", "3000007"]])
def test_egress_without_a_socket_exits_2(modes, capsys, args):
    assert main(["launch.py", "serve", *args]) == 2
    assert "--egress needs a value" in capsys.readouterr().err


@pytest.fixture
def relay_starts(monkeypatch) -> list[str]:
    started: list[str] = []
    monkeypatch.setattr(relay, "start", lambda path: started.append(path))
    return started


def test_the_relay_is_started_with_the_egress_socket(relay_starts):
    start_relay(CodeUser(3_000_007, 3_000_007), "/run/isol8-egress/proxy.sock")
    start_relay(CodeUser(3_000_007, 3_000_007), None)
    assert relay_starts == ["/run/isol8-egress/proxy.sock"]


def test_no_relay_when_the_code_user_has_the_relays_uid(relay_starts, capsys):
    start_relay(CodeUser(relay.RELAY_UID, relay.RELAY_UID), "/run/isol8-egress/proxy.sock")
    assert relay_starts == []
    assert "no egress relay" in capsys.readouterr().err


def test_serve_refusing_to_run_starts_no_relay(relay_starts, capsys):
    assert serve(CodeUser(os.getuid(), os.getgid()), egress="/run/isol8-egress/proxy.sock") == 2
    assert relay_starts == []
