"""The code user's files: paths resolved beneath a root, never through a way out of it.

Every function here runs while this process acts as the code user (see
procs.CodeUser), so the kernel checks each access as the code user's; on top
of that, a path is resolved one component at a time with O_NOFOLLOW relative
to the directory opened before it, and symlinks are followed by hand only
while they stay beneath the root. Nothing opened here ever blocks: FIFOs and
other non-regular files are refused.

The roots are parameters (the defaults are the container's /sandbox and
/tmp), so the rules can be exercised in any directory.
"""

from __future__ import annotations

import base64
import errno
import io
import os
import posixpath
import stat
import tarfile

from isol8_launcher.protocol import READ_CHUNK, OpError

SANDBOX = "/sandbox"
# Places the code user can write to. A reset empties all of them, so nothing of
# one run is visible to the next one.
SCRATCH_DIRS = ("/sandbox", "/tmp", "/dev/shm", "/dev/mqueue")
# Where a run's files and outputPaths may be; the file API only reaches /sandbox.
RUN_FILE_ROOTS = ("/sandbox", "/tmp")
MAX_SYMLINKS = 40
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def scratch_root(path: str, roots: tuple[str, ...] = (SANDBOX,)) -> str:
    """The scratch directory (/sandbox, or /tmp where allowed) that ``path`` is beneath.

    A relative path is relative to the first root (/sandbox).
    """
    full = path if path.startswith("/") else posixpath.join(roots[0], path)
    norm = posixpath.normpath(full)
    for root in roots:
        if norm == root or norm.startswith(root + "/"):
            return root
    raise OpError("path_outside_sandbox", f"path is outside {' or '.join(roots)}: {path}")


def beneath_parts(path: str, root: str) -> list[str]:
    """Split a user path into components beneath ``root``, refusing escapes.

    A relative path is relative to ``root``.
    """
    if "\x00" in path:
        raise OpError("path_outside_sandbox", "path contains a NUL byte")
    full = path if path.startswith("/") else posixpath.join(root, path)
    norm = posixpath.normpath(full)
    if norm != root and not norm.startswith(root + "/"):
        raise OpError("path_outside_sandbox", f"path is outside {root}: {path}")
    return [p for p in norm[len(root) :].split("/") if p]


class _Walk:
    """The state of ``open_beneath``: the directories opened so far, what is left of the path."""

    def __init__(self, parts: list[str], root: str, *, create_dirs: bool, follow: bool) -> None:
        self.root = root
        self.create_dirs = create_dirs
        self.follow = follow
        self.pending = list(parts)
        self.stack: list[int] = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
        self.links = 0

    def step(self) -> None:
        """Go down one directory (or back up one, for ``..``), or replace a symlink by its target."""
        name = self.pending.pop(0)
        if name == "..":
            if len(self.stack) == 1:
                raise OpError("path_outside_sandbox", f"path leads outside {self.root}")
            os.close(self.stack.pop())
            return
        try:
            fd = os.open(name, DIRECTORY_FLAGS, dir_fd=self.stack[-1])
        except FileNotFoundError:
            if not self.create_dirs:
                raise OpError("not_found", "no such file") from None
            os.mkdir(name, 0o755, dir_fd=self.stack[-1])
            fd = os.open(name, DIRECTORY_FLAGS, dir_fd=self.stack[-1])
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            self.follow_link(name)
            return
        self.stack.append(fd)

    def follow_link(self, name: str) -> None:
        """``name`` could not be opened as a directory: if it is a symlink, walk its target instead."""
        st = os.stat(name, dir_fd=self.stack[-1], follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            raise OpError("not_found", "a path component is not a directory")
        self.links += 1
        if not self.follow:
            raise OpError("path_outside_sandbox", "the path goes through a symlink")
        if self.links > MAX_SYMLINKS:
            raise OpError("path_outside_sandbox", "too many symlinks")
        target = os.readlink(name, dir_fd=self.stack[-1])
        if target.startswith("/"):
            # Restart from the root with the absolute target.
            new_parts = beneath_parts(target, self.root)
            for extra in self.stack[1:]:
                os.close(extra)
            del self.stack[1:]
            self.pending = new_parts + self.pending
        else:
            self.pending = [p for p in target.split("/") if p and p != "."] + self.pending

    def close(self) -> None:
        for fd in self.stack:
            os.close(fd)


def open_beneath(
    parts: list[str], *, root: str = SANDBOX, create_dirs: bool = False, follow: bool = True
) -> tuple[int, str]:
    """Open the parent directory of ``parts`` beneath ``root``.

    Every component is opened with O_NOFOLLOW relative to the previous one.
    With ``follow``, symlinks are resolved by hand and only while they stay
    beneath ``root``; one that leads anywhere else is refused. Without it, any
    symlink on the way is refused. Returns (dir_fd, last name).
    """
    if not parts:
        raise OpError("path_outside_sandbox", f"path names {root} itself")
    walk = _Walk(parts, root, create_dirs=create_dirs, follow=follow)
    try:
        while len(walk.pending) > 1:
            walk.step()
        last = walk.pending[0]
        if last == "..":
            raise OpError("path_outside_sandbox", f"path leads outside {root}")
        return walk.stack.pop(), last
    finally:
        walk.close()


def resolve_final(dir_fd: int, name: str, root: str = SANDBOX) -> tuple[int, str]:
    """Follow a final-component symlink while it stays beneath ``root``."""
    for _ in range(MAX_SYMLINKS):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return dir_fd, name
        if not stat.S_ISLNK(st.st_mode):
            return dir_fd, name
        target = os.readlink(name, dir_fd=dir_fd)
        if target.startswith("/"):
            parts = beneath_parts(target, root)
        else:
            # A relative target is resolved against the directory that holds it.
            here = os.readlink(f"/proc/self/fd/{dir_fd}")
            parts = beneath_parts(posixpath.join(here, target), root)
        os.close(dir_fd)
        dir_fd, name = open_beneath(parts, root=root)
    os.close(dir_fd)
    raise OpError("path_outside_sandbox", "too many symlinks")


def open_user_file(path: str, *, roots: tuple[str, ...] = (SANDBOX,), follow: bool = True) -> int:
    """Open an existing regular file beneath one of ``roots`` for reading; never blocks."""
    root = scratch_root(path, roots)
    dir_fd, name = open_beneath(beneath_parts(path, root), root=root, follow=follow)
    if follow:
        dir_fd, name = resolve_final(dir_fd, name, root)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        raise OpError("not_found", f"file not found: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OpError("path_outside_sandbox", f"{path} is a symlink") from None
        raise
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OpError("not_found", f"not a regular file: {path}")
    return fd


def read_fd(fd: int, max_bytes: int, path: str) -> bytes:
    """All of an open file, at most ``max_bytes`` (OpError past it); closes ``fd``."""
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise OpError("payload_too_large", f"file is {size} bytes, limit {max_bytes}")
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise OpError("payload_too_large", f"{path} is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_user_file(path: str, max_bytes: int, roots: tuple[str, ...] = (SANDBOX,)) -> bytes:
    """A file beneath /sandbox (symlinks followed while they stay beneath it)."""
    return read_fd(open_user_file(path, roots=roots), max_bytes, path)


def write_user_file(path: str, content: bytes, mode: int = 0o644, roots: tuple[str, ...] = (SANDBOX,)) -> None:
    """Create or replace a regular file beneath one of ``roots``; anything else there is refused.

    Missing parent directories are created (0755). Opened with O_NONBLOCK (a
    FIFO without a reader fails at once instead of blocking this process) and
    checked to be a regular file before a byte is written.
    """
    root = scratch_root(path, roots)
    dir_fd, name = resolve_final(*open_beneath(beneath_parts(path, root), root=root, create_dirs=True), root)
    try:
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=dir_fd
        )
    except IsADirectoryError:
        raise OpError("validation_error", f"path is a directory: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OpError("path_outside_sandbox", f"symlink leads outside {root}") from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads
            raise OpError("validation_error", f"not a regular file: {path}") from None
        raise
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OpError("validation_error", f"not a regular file: {path}")
        os.ftruncate(fd, 0)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OpError("sandbox_full", f"no space left in {root}") from None
        raise
    finally:
        os.close(fd)


def write_files(files: list[list[str]], roots: tuple[str, ...] = RUN_FILE_ROOTS) -> None:
    """A run's files: [path, base64 content] pairs, beneath one of ``roots``."""
    for path, b64 in files:
        try:
            write_user_file(path, base64.b64decode(b64), roots=roots)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OpError("sandbox_full", "no space left in the sandbox") from None
            raise OpError("validation_error", f"cannot write {path}: {exc.strerror}") from None


def read_output_files(
    paths: list[str], max_file: int, max_total: int, roots: tuple[str, ...] = RUN_FILE_ROOTS
) -> dict[str, str]:
    """A run's outputPaths: regular files only, no symlink anywhere on the way, each file once.

    Missing or refused paths are omitted, as isol8 does; so are files past
    ``max_total`` bytes in all (a file listed twice, or hard-linked under
    two names, is returned once and counted once).
    """
    found: dict[str, str] = {}
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in paths:
        try:
            fd = open_user_file(path, roots=roots, follow=False)
        except (OpError, OSError):
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in seen or total + st.st_size > max_total:
            os.close(fd)
            continue
        try:
            data = read_fd(fd, min(max_file, max_total - total), path)
        except (OpError, OSError):
            continue
        seen.add((st.st_dev, st.st_ino))
        total += len(data)
        found[path] = base64.b64encode(data).decode()
    return found


def pack_tar(names: list[str], max_bytes: int, root: str = SANDBOX) -> str:
    """A gzipped tar (base64) of some paths under ``root`` (an installer's packages)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name in names:
            parts = beneath_parts(name, root)
            path = posixpath.join(root, *parts)
            if os.path.lexists(path):
                tar.add(path, arcname=posixpath.join(*parts))
    if buffer.tell() > max_bytes:
        raise OpError("payload_too_large", f"packages take more than {max_bytes} bytes")
    return base64.b64encode(buffer.getvalue()).decode()


def unpack_tar(data: bytes, root: str = SANDBOX) -> None:
    """Unpack a gzipped tar into ``root`` (installed packages)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = []
        for member in tar.getmembers():
            # Only plain files, directories and links that stay beneath /sandbox;
            # the code user could not write anywhere else anyway.
            target = posixpath.normpath(posixpath.join(root, member.name))
            if not target.startswith(root + "/") or member.isdev():
                continue
            members.append(member)
        try:
            tar.extractall(root, members=members, filter=_skip_refused)
        except TypeError:  # a Python without extraction filters
            tar.extractall(root, members=members)


def _skip_refused(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, skipping what it refuses (a link leading out, an absolute link).

    One refused member must not stop the extraction half-way.
    """
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        return None


def wipe_scratch(uid: int, dirs: tuple[str, ...] = SCRATCH_DIRS) -> None:
    """Empty every writable place of what ``uid`` owns there.

    Runs as the code user after all its processes died (and nothing then
    writes again).
    """
    for top in dirs:
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for name in names:
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if st.st_uid != uid:
                continue
            if stat.S_ISDIR(st.st_mode):
                remove_tree(path)
            else:
                os.unlink(path)


def remove_tree(path: str) -> None:
    # Directories the program made unreadable are made writable again first.
    os.chmod(path, 0o700)
    for name in os.listdir(path):
        child = os.path.join(path, name)
        st = os.lstat(child)
        if stat.S_ISDIR(st.st_mode):
            remove_tree(child)
        else:
            os.unlink(child)
    os.rmdir(path)
