"""paths.py: the code user's files, resolved beneath a root (here a directory in tmp_path), never through a way out."""

from __future__ import annotations

import base64
import io
import os
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from isol8_launcher.paths import (
    MAX_SYMLINKS,
    beneath_parts,
    open_user_file,
    pack_tar,
    read_output_files,
    read_user_file,
    scratch_root,
    unpack_tar,
    wipe_scratch,
    write_files,
    write_user_file,
)
from isol8_launcher.protocol import OpError

SECRET = b"outside the root"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the root, with a file the code must never reach through the root."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_bytes(SECRET)
    return path


def read(root: Path, path: str, max_bytes: int = 1024) -> bytes:
    return read_user_file(path, max_bytes, roots=(str(root),))


def write(root: Path, path: str, content: bytes, mode: int = 0o644) -> None:
    write_user_file(path, content, mode, roots=(str(root),))


def refused(fn: Callable[[], object]) -> str:
    """The code of the OpError ``fn`` raises."""
    with pytest.raises(OpError) as error:
        fn()
    return error.value.code


def without_blocking(fn: Callable[[], object], fifo: Path) -> object:
    """What ``fn`` returns or raises; fails the test if it blocks (on opening ``fifo``) for 2 s."""
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(fn())
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(2)
    if thread.is_alive():
        for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK):  # release it
            try:
                os.close(os.open(fifo, flags))
            except OSError:
                pass
        thread.join(2)
        pytest.fail(f"opening the FIFO {fifo} blocked")
    return outcome[0]


# ------------------------------------------------------------ beneath_parts, scratch_root


def test_a_relative_path_is_split_into_components_beneath_the_root(root):
    assert beneath_parts("a/b/c.txt", str(root)) == ["a", "b", "c.txt"]


def test_an_absolute_path_beneath_the_root_is_split_below_it(root):
    assert beneath_parts(f"{root}/a/./b//c.txt", str(root)) == ["a", "b", "c.txt"]


def test_dot_dot_that_stays_beneath_the_root_is_resolved(root):
    assert beneath_parts("a/../b.txt", str(root)) == ["b.txt"]


def test_the_root_itself_has_no_components(root):
    assert beneath_parts(str(root), str(root)) == []


@pytest.mark.parametrize("path", ["../x", "a/../../x", "..", "{root}/../x", "{root}/a/../../x"])
def test_dot_dot_escaping_the_root_is_refused(root, path):
    assert refused(lambda: beneath_parts(path.format(root=root), str(root))) == "path_outside_sandbox"


@pytest.mark.parametrize("path", ["/etc/passwd", "/", "{root}-other/x", "{root}x"])
def test_an_absolute_path_outside_the_root_is_refused(root, path):
    assert refused(lambda: beneath_parts(path.format(root=root), str(root))) == "path_outside_sandbox"


def test_a_nul_byte_is_refused(root):
    assert refused(lambda: beneath_parts("a\x00b", str(root))) == "path_outside_sandbox"


def test_a_relative_path_belongs_to_the_first_root(tmp_path):
    roots = (str(tmp_path / "sandbox"), str(tmp_path / "tmp"))
    assert scratch_root("x.txt", roots) == roots[0]
    assert scratch_root(f"{roots[1]}/x.txt", roots) == roots[1]


def test_a_path_beneath_no_root_is_refused(tmp_path):
    roots = (str(tmp_path / "sandbox"), str(tmp_path / "tmp"))
    assert refused(lambda: scratch_root(str(tmp_path / "elsewhere" / "x"), roots)) == "path_outside_sandbox"


# ------------------------------------------------------------------ reading


def test_a_regular_file_is_read(root):
    (root / "a").mkdir()
    (root / "a" / "f.txt").write_bytes(b"content")
    assert read(root, "a/f.txt") == b"content"
    assert read(root, f"{root}/a/f.txt") == b"content"


def test_a_file_beneath_the_second_root_is_read(tmp_path):
    first, second = tmp_path / "sandbox", tmp_path / "tmp"
    first.mkdir()
    second.mkdir()
    (second / "f.txt").write_bytes(b"in tmp")
    assert read_user_file(str(second / "f.txt"), 100, roots=(str(first), str(second))) == b"in tmp"


def test_a_missing_file_is_not_found(root):
    assert refused(lambda: read(root, "nothing.txt")) == "not_found"
    assert refused(lambda: read(root, "no/such/dir.txt")) == "not_found"


def test_a_regular_file_used_as_a_directory_is_not_found(root):
    (root / "f.txt").write_bytes(b"x")
    assert refused(lambda: read(root, "f.txt/inside")) == "not_found"


def test_the_root_itself_cannot_be_read(root):
    assert refused(lambda: read(root, str(root))) == "path_outside_sandbox"


def test_a_relative_symlink_inside_the_root_is_followed(root):
    (root / "target.txt").write_bytes(b"target")
    (root / "link").symlink_to("target.txt")
    assert read(root, "link") == b"target"


def test_an_absolute_symlink_inside_the_root_is_followed(root):
    (root / "d").mkdir()
    (root / "d" / "target.txt").write_bytes(b"target")
    (root / "link").symlink_to(root / "d" / "target.txt")
    assert read(root, "link") == b"target"


def test_a_symlink_up_and_back_inside_the_root_is_followed(root):
    (root / "d").mkdir()
    (root / "e").mkdir()
    (root / "e" / "target.txt").write_bytes(b"target")
    (root / "d" / "link").symlink_to("../e/target.txt")
    assert read(root, "d/link") == b"target"


def test_a_symlinked_directory_inside_the_root_is_followed(root):
    (root / "real" / "deep").mkdir(parents=True)
    (root / "real" / "deep" / "f.txt").write_bytes(b"deep")
    (root / "alias").symlink_to("real/deep")
    (root / "absolute-alias").symlink_to(root / "real")
    assert read(root, "alias/f.txt") == b"deep"
    assert read(root, "absolute-alias/deep/f.txt") == b"deep"


def test_an_absolute_symlink_on_the_way_is_resolved_from_the_root(root):
    (root / "real").mkdir()
    (root / "real" / "f.txt").write_bytes(b"real")
    (root / "sub").mkdir()
    (root / "sub" / "real").mkdir()  # a decoy: the target is the root's real/, not sub/real/
    (root / "sub" / "door").symlink_to(root / "real")
    assert read(root, "sub/door/f.txt") == b"real"


def test_a_chain_of_symlinks_inside_the_root_is_followed(root):
    (root / "target.txt").write_bytes(b"end of the chain")
    for i in range(10):
        (root / f"link{i}").symlink_to("target.txt" if i == 0 else f"link{i - 1}")
    assert read(root, "link9") == b"end of the chain"


@pytest.mark.parametrize("target", ["{outside}/secret.txt", "../outside/secret.txt"])
def test_a_symlink_leading_out_of_the_root_is_refused(root, outside, target):
    (root / "link").symlink_to(target.format(outside=outside))
    assert refused(lambda: read(root, "link")) == "path_outside_sandbox"


@pytest.mark.parametrize("target", ["{outside}", "../outside", "/"])
def test_a_symlinked_directory_leading_out_of_the_root_is_refused(root, outside, target):
    (root / "door").symlink_to(target.format(outside=outside))
    assert refused(lambda: read(root, "door/secret.txt")) == "path_outside_sandbox"


def test_a_symlink_loop_is_refused(root):
    (root / "self").symlink_to("self")
    (root / "ping").symlink_to("pong")
    (root / "pong").symlink_to("ping")
    assert refused(lambda: read(root, "self")) == "path_outside_sandbox"
    assert refused(lambda: read(root, "ping")) == "path_outside_sandbox"


def test_a_symlink_loop_on_the_way_is_refused(root):
    (root / "ping").symlink_to("pong")
    (root / "pong").symlink_to("ping")
    assert refused(lambda: read(root, "ping/f.txt")) == "path_outside_sandbox"


def test_a_chain_longer_than_max_symlinks_is_refused(root):
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_bytes(b"x")
    for i in range(MAX_SYMLINKS + 1):
        (root / f"link{i}").symlink_to("d" if i == 0 else f"link{i - 1}")
    last = f"link{MAX_SYMLINKS}"
    assert refused(lambda: read(root, f"{last}/f.txt")) == "path_outside_sandbox"
    (root / "d" / "f.txt").unlink()
    (root / "link0").unlink()
    (root / "link0").symlink_to("f.txt")
    (root / "f.txt").write_bytes(b"x")
    assert refused(lambda: read(root, last)) == "path_outside_sandbox"


def test_a_directory_is_not_a_file(root):
    (root / "d").mkdir()
    assert refused(lambda: read(root, "d")) == "not_found"


def test_a_fifo_is_refused_without_waiting_for_a_writer(root):
    fifo = root / "fifo"
    os.mkfifo(fifo)
    result = without_blocking(lambda: read(root, "fifo"), fifo)
    assert isinstance(result, OpError) and result.code == "not_found"


def test_a_file_past_max_bytes_is_refused(root):
    (root / "f.txt").write_bytes(b"0123456789")
    assert read(root, "f.txt", max_bytes=10) == b"0123456789"
    assert refused(lambda: read(root, "f.txt", max_bytes=9)) == "payload_too_large"


def test_without_follow_any_symlink_on_the_way_is_refused(root):
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_bytes(b"x")
    (root / "link.txt").symlink_to("d/f.txt")
    (root / "alias").symlink_to("d")
    assert refused(lambda: open_user_file("link.txt", roots=(str(root),), follow=False)) == "path_outside_sandbox"
    assert refused(lambda: open_user_file("alias/f.txt", roots=(str(root),), follow=False)) == "path_outside_sandbox"
    fd = open_user_file("d/f.txt", roots=(str(root),), follow=False)
    os.close(fd)


# ------------------------------------------------------------------ writing


def test_a_new_file_is_written_with_its_missing_directories(root):
    write(root, "a/b/new.txt", b"new")
    assert (root / "a" / "b" / "new.txt").read_bytes() == b"new"
    assert (root / "a" / "b").stat().st_mode & 0o777 == 0o755


def test_a_file_is_written_with_the_mode_asked_for(root):
    write(root, "private.txt", b"x", mode=0o600)
    assert (root / "private.txt").stat().st_mode & 0o777 == 0o600


def test_an_existing_file_is_replaced_entirely(root):
    (root / "f.txt").write_bytes(b"a much longer old content")
    write(root, "f.txt", b"short")
    assert (root / "f.txt").read_bytes() == b"short"


def test_writing_through_a_symlink_inside_the_root_writes_its_target(root):
    (root / "target.txt").write_bytes(b"old")
    (root / "link").symlink_to("target.txt")
    write(root, "link", b"new")
    assert (root / "target.txt").read_bytes() == b"new"
    assert (root / "link").is_symlink()


@pytest.mark.parametrize("target", ["{outside}/secret.txt", "../outside/secret.txt", "{outside}/new.txt"])
def test_writing_through_a_symlink_leading_out_is_refused(root, outside, target):
    (root / "link").symlink_to(target.format(outside=outside))
    assert refused(lambda: write(root, "link", b"overwritten")) == "path_outside_sandbox"
    assert (outside / "secret.txt").read_bytes() == SECRET
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


@pytest.mark.parametrize("target", ["{outside}", "../outside"])
def test_writing_beneath_a_symlinked_directory_leading_out_is_refused(root, outside, target):
    (root / "door").symlink_to(target.format(outside=outside))
    assert refused(lambda: write(root, "door/new.txt", b"x")) == "path_outside_sandbox"
    assert refused(lambda: write(root, "door/sub/new.txt", b"x")) == "path_outside_sandbox"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_writing_outside_the_roots_is_refused(root, outside):
    assert refused(lambda: write(root, str(outside / "new.txt"), b"x")) == "path_outside_sandbox"
    assert refused(lambda: write(root, "../outside/new.txt", b"x")) == "path_outside_sandbox"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_writing_a_directory_is_refused(root):
    (root / "d").mkdir()
    assert refused(lambda: write(root, "d", b"x")) == "validation_error"


def test_writing_a_fifo_nobody_reads_is_refused_without_blocking(root):
    fifo = root / "fifo"
    os.mkfifo(fifo)
    result = without_blocking(lambda: write(root, "fifo", b"x"), fifo)
    assert isinstance(result, OpError) and result.code == "validation_error"


def test_a_runs_files_are_written_from_base64(tmp_path):
    roots = (str(tmp_path / "sandbox"), str(tmp_path / "tmp"))
    for path in roots:
        os.mkdir(path)
    write_files([["main.py", base64.b64encode(b"print(1)").decode()],
                 [f"{roots[1]}/data.bin", base64.b64encode(b"\x00\xff").decode()]], roots)
    assert (tmp_path / "sandbox" / "main.py").read_bytes() == b"print(1)"
    assert (tmp_path / "tmp" / "data.bin").read_bytes() == b"\x00\xff"


# ------------------------------------------------------------------ a run's outputPaths


def output_files(root: Path, paths: list[str], max_file: int = 1024, max_total: int = 4096) -> dict[str, bytes]:
    found = read_output_files(paths, max_file, max_total, roots=(str(root),))
    return {path: base64.b64decode(content) for path, content in found.items()}


def test_output_files_are_returned_under_the_paths_asked_for(root):
    (root / "out").mkdir()
    (root / "out" / "a.txt").write_bytes(b"A")
    (root / "b.bin").write_bytes(b"\x00B")
    assert output_files(root, [f"{root}/out/a.txt", "b.bin"]) == {f"{root}/out/a.txt": b"A", "b.bin": b"\x00B"}


def test_missing_and_outside_output_paths_are_left_out(root, outside):
    (root / "a.txt").write_bytes(b"A")
    assert output_files(root, ["missing.txt", str(outside / "secret.txt"), "../outside/secret.txt", "a.txt"]) == {
        "a.txt": b"A"
    }


def test_an_output_path_that_is_a_symlink_is_left_out_even_inside_the_root(root, outside):
    (root / "a.txt").write_bytes(b"A")
    (root / "inside-link").symlink_to("a.txt")
    (root / "outside-link").symlink_to(outside / "secret.txt")
    assert output_files(root, ["inside-link", "outside-link"]) == {}


def test_an_output_path_through_a_symlinked_directory_is_left_out(root, outside):
    (root / "d").mkdir()
    (root / "d" / "a.txt").write_bytes(b"A")
    (root / "alias").symlink_to("d")
    (root / "door").symlink_to(outside)
    assert output_files(root, ["alias/a.txt", "door/secret.txt", "d/a.txt"]) == {"d/a.txt": b"A"}


def test_output_paths_that_are_not_regular_files_are_left_out_without_blocking(root):
    fifo = root / "fifo"
    os.mkfifo(fifo)
    (root / "d").mkdir()
    assert without_blocking(lambda: output_files(root, ["fifo", "d"]), fifo) == {}


def test_an_output_file_past_the_per_file_limit_is_left_out(root):
    (root / "big.txt").write_bytes(b"x" * 11)
    (root / "small.txt").write_bytes(b"y" * 10)
    assert output_files(root, ["big.txt", "small.txt"], max_file=10) == {"small.txt": b"y" * 10}


def test_output_files_past_the_total_limit_are_left_out(root):
    for name in ("a", "b", "c"):
        (root / name).write_bytes(name.encode() * 6)
    (root / "d").write_bytes(b"d" * 4)
    found = output_files(root, ["a", "b", "c", "d"], max_file=100, max_total=10)
    assert found == {"a": b"aaaaaa", "d": b"dddd"}


def test_a_file_named_twice_or_hard_linked_is_returned_once(root):
    (root / "a").write_bytes(b"a" * 6)
    os.link(root / "a", root / "hard-link")
    (root / "b").write_bytes(b"b" * 4)
    found = output_files(root, ["a", "a", "hard-link", "b"], max_file=100, max_total=100)
    assert found == {"a": b"a" * 6, "b": b"b" * 4}


# ------------------------------------------------------------------ tarballs of packages


def members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def tarball(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_member(name: str, data: bytes = b"data") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link_member(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def test_a_packed_tree_unpacks_the_same_elsewhere(tmp_path, root):
    (root / ".local" / "lib").mkdir(parents=True)
    (root / ".local" / "lib" / "mod.py").write_bytes(b"X = 1\n")
    (root / ".local" / "bin").mkdir()
    (root / ".local" / "bin" / "tool").symlink_to("../lib/mod.py")
    (root / "package.json").write_bytes(b"{}")
    archive = base64.b64decode(pack_tar([".local", "package.json", "missing"], 1024 * 1024, str(root)))
    other = tmp_path / "other"
    other.mkdir()
    unpack_tar(archive, str(other))
    assert (other / ".local" / "lib" / "mod.py").read_bytes() == b"X = 1\n"
    assert os.readlink(other / ".local" / "bin" / "tool") == "../lib/mod.py"
    assert (other / "package.json").read_bytes() == b"{}"
    assert not (other / "missing").exists()


def test_packing_stores_symlinks_as_symlinks(root, outside):
    (root / "pkg").mkdir()
    (root / "pkg" / "door").symlink_to(outside)
    found = members(base64.b64decode(pack_tar(["pkg"], 1024 * 1024, str(root))))
    assert found["pkg/door"].issym() and found["pkg/door"].linkname == str(outside)
    assert not any(name.endswith("secret.txt") for name in found)


def test_packing_a_path_outside_the_root_is_refused(root, outside):
    assert refused(lambda: pack_tar(["../outside"], 1024 * 1024, str(root))) == "path_outside_sandbox"
    assert refused(lambda: pack_tar([str(outside)], 1024 * 1024, str(root))) == "path_outside_sandbox"


def test_packing_more_than_max_bytes_is_refused(root):
    (root / "noise.bin").write_bytes(os.urandom(64 * 1024))
    assert refused(lambda: pack_tar(["noise.bin"], 32 * 1024, str(root))) == "payload_too_large"


def test_unpacking_skips_members_named_outside_the_root(tmp_path, root, outside):
    archive = tarball(file_member("../escaped.txt"), file_member(f"{outside}/absolute.txt"), file_member("kept.txt"))
    unpack_tar(archive, str(root))
    assert sorted(p.name for p in root.iterdir()) == ["kept.txt"]
    assert not (tmp_path / "escaped.txt").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_unpacking_skips_device_and_fifo_members(root):
    fifo = tarfile.TarInfo("fifo")
    fifo.type = tarfile.FIFOTYPE
    device = tarfile.TarInfo("null")
    device.type = tarfile.CHRTYPE
    device.devmajor, device.devminor = 1, 3
    unpack_tar(tarball((fifo, None), (device, None), file_member("kept.txt")), str(root))
    assert sorted(p.name for p in root.iterdir()) == ["kept.txt"]


def test_unpacking_keeps_a_symlink_that_stays_beneath_the_root(root):
    unpack_tar(tarball(file_member("real.txt", b"real"), link_member("alias", "real.txt")), str(root))
    assert os.readlink(root / "alias") == "real.txt"
    assert (root / "alias").read_bytes() == b"real"


@pytest.mark.parametrize("target", ["../outside", "{outside}"])
def test_a_symlink_member_leading_out_stops_the_unpacking_before_anything_is_written_outside(root, outside, target):
    """The extraction filter ("data") refuses the link and tarfile raises: the members after it are not unpacked."""
    archive = tarball(link_member("door", target.format(outside=outside)), file_member("door/planted.txt"))
    with pytest.raises(tarfile.TarError):
        unpack_tar(archive, str(root))
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert not (root / "door").exists() and not (root / "door").is_symlink()


# ------------------------------------------------------------------ a reset's wipe


def test_the_wipe_empties_the_dirs_of_what_the_uid_owns_and_keeps_what_others_own(tmp_path, outside):
    first, second = tmp_path / "sandbox", tmp_path / "shm"
    first.mkdir()
    second.mkdir()
    (first / "tree" / "locked").mkdir(parents=True)
    (first / "tree" / "locked" / "f.txt").write_bytes(b"x")
    (first / "tree" / "locked").chmod(0)
    (first / "door").symlink_to(outside)
    (second / "mine.txt").write_bytes(b"x")
    (second / "theirs.txt").write_bytes(b"x")
    os.chown(second / "theirs.txt", 12345, 12345)
    wipe_scratch(os.getuid(), (str(first), str(second), str(tmp_path / "missing")))
    assert list(first.iterdir()) == []
    assert [p.name for p in second.iterdir()] == ["theirs.txt"]
    assert (outside / "secret.txt").read_bytes() == SECRET
