"""Files of an artifact (or checkpoint) folder, handled so that nothing outside it is ever read or
written and nothing already written is lost.

    safe_path(root, name)        a manifest's file name -> a path inside root, or ArtifactError
    read_verified(root, name, h) the file's bytes, checked against sha256 h (the bytes that are
                                 hashed are the bytes returned: a file swapped after the check is
                                 never used)
    atomic_write(path, data)     unique temp file in the same folder, fsync, rename over path
    install_folder(tmp, out)     make a finished folder `out`; at every instant `out` holds the old
                                 or the new folder, never nothing (Linux: renameat2 RENAME_EXCHANGE)
    apply_umask(path)            folders from tempfile.mkdtemp are 0700: give them the umask's mode
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path


class ArtifactError(Exception):
    """An artifact folder is missing, incomplete, corrupt, unsafe or of another schema."""


def safe_path(root: Path, name: object, what: str = "file") -> Path:
    """Resolve a file name from a manifest inside `root`. Refuses anything that is not a plain
    relative name (absolute paths, '..', empty parts, NUL, backslashes) and symlinks whose target
    leaves the folder; the message names the offending entry."""
    if not isinstance(name, str) or not name:
        raise ArtifactError(f"{what}: file name must be a non-empty string, got {name!r}; re-export the artifact.")
    parts = name.split("/")
    if (name.startswith("/") or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts)
            or os.path.isabs(name)):
        raise ArtifactError(f"{what}: file name {name!r} is not a plain name inside the artifact folder "
                            f"(absolute paths and '..' are refused); re-export the artifact.")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, name))
    if os.path.commonpath([real_root, real]) != real_root:
        raise ArtifactError(f"{what}: '{name}' is a symlink that leads outside the artifact folder; refused. "
                            f"Copy the file into the folder or re-export the artifact.")
    return Path(real)


def read_verified(root: Path, name: str, sha256: str, what: str = "file") -> bytes:
    """The bytes of `name` inside `root`, or ArtifactError if missing or not matching `sha256`."""
    path = safe_path(root, name, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ArtifactError(f"artifact file '{root / name}' is missing; the artifact is incomplete, re-export it.") from None
    except OSError as e:
        raise ArtifactError(f"cannot read artifact file '{root / name}' ({e.strerror}); re-export it.") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactError(f"artifact file '{root / name}' is not a regular file; re-export the artifact.")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(fd)
    if hashlib.sha256(data).hexdigest() != sha256:
        # The digest of what was read is not printed: it would leak a hash of whatever the name reached.
        raise ArtifactError(f"artifact file '{root / name}' does not match its sha256 in manifest.json: it was "
                            f"truncated or replaced; re-export the artifact.")
    return data


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it; serialised within this process)."""
    with _UMASK_LOCK:
        u = os.umask(0o022)
        os.umask(u)
    return u


def apply_umask(path: Path) -> None:
    """Give a folder made by tempfile.mkdtemp (0700) and its contents the modes a plain mkdir /
    open would have given them under the current umask."""
    u = current_umask()
    for dirpath, dirnames, filenames in os.walk(path):
        os.chmod(dirpath, 0o777 & ~u)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~u)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a temp file created exclusively (unique name, O_EXCL: a planted
    symlink is never followed) in the same folder, fsynced, renamed over `path` (rename replaces a
    symlink itself, never its target), then the folder fsynced."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False where the call does not exist."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False  # kernel or file system without RENAME_EXCHANGE
    raise OSError(err, os.strerror(err), str(b))


def install_folder(tmp: Path, out: Path) -> None:
    """Move a finished folder `tmp` to `out` (a sibling). An existing `out` is swapped with `tmp`
    in one atomic step, then the old one (now at `tmp`) is deleted: a crash at any point leaves
    `out` holding either the old or the new folder. Modes follow the umask."""
    tmp, out = Path(tmp), Path(out)
    apply_umask(tmp)
    _fsync_dir(tmp)
    if os.path.lexists(out):
        if not os.path.isdir(out) or os.path.islink(out):
            raise ArtifactError(f"'{out}' exists and is not a folder; move it away or choose another --out.")
        if _exchange(tmp, out):
            shutil.rmtree(tmp, ignore_errors=True)
            _fsync_dir(out.parent)
            return
        # No atomic exchange here (not Linux): the shortest gap two renames allow.
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    _fsync_dir(out.parent)
