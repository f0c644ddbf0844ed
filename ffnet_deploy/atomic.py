"""Atomic file writes: a temporary file in the target's folder, renamed into place only once it is complete.

Everything the tool writes for a user (fused checkpoints, reports, benchmark results, TensorRT timing caches) goes
through :func:`atomic_path`, so an error, an interrupt or a kill never leaves a half-written file under the final
name; the temporary of a writer killed with SIGKILL is removed by the next write to the same file. Whole artifact
directories follow the same rule in :mod:`ffnet_deploy.artifact.workdir`, with the same primitives: :func:`locked`
(an ``flock`` lock file next to the target, held across check and rename), :func:`rename_noreplace` and
:func:`exchange`.

Temporary files are created with mode ``0o666`` filtered by the umask, like any file a user's program creates, and
a write that fails (``ENOSPC``, ``EDQUOT``, ``EACCES``...) becomes one line naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from ffnet_deploy.errors import ConfigError, FFNetDeployError
from ffnet_deploy.interrupts import handle_signals

Verdict = Callable[[Path], "str | None"]
"""Decides whether an existing file may be replaced: returns why not, or ``None`` when it may."""


def os_reason(err: OSError) -> str:
    """The reason of an ``OSError`` for a one-line message: ``"no space left on device"``."""
    text = err.strerror or str(err) or type(err).__name__
    return text[:1].lower() + text[1:]


def write_hint(code: int | None) -> str:
    """What to do about a failed write with errno ``code``, for the end of a one-line message."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free some space or choose another folder"
    return "choose a writable path"


@contextlib.contextmanager
def removed_on_failure(folder: str | Path) -> Iterator[Path]:
    """Inside the block, ``folder`` and any missing parents may be created; if the block fails, those are removed.

    For outputs of several files (a bench's results and plots, a pipeline's state): each file is atomic on its own,
    and this keeps a failed first write (a full disk, an interrupt) from leaving an empty or partial folder behind.
    A folder that existed before the block is never touched.
    """
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists() and not p.is_symlink()]
    try:
        yield folder
    except BaseException:
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------------------------
# Locks and renames
# --------------------------------------------------------------------------------------------------------------------


def lock_path(target: Path) -> Path:
    """The lock file that guards ``target``: ``.<name>.lock`` in the same folder."""
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def locked(target: str | Path, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` that every ffnet-deploy process writing ``target`` takes before it checks and
    renames, so that the check is still true at the moment of the rename.

    The lock file is deleted on release, so that no stray file stays next to the user's output. A process that
    waited on a lock file deleted meanwhile sees that the path no longer names the inode it locked, and retries.

    Args:
        target: What the lock guards.
        wait: ``False`` fails at once when another process holds the lock (a pipeline refuses a second one on its
            output instead of queueing behind it).

    Raises:
        BlockingIOError: Without ``wait``, if another process holds the lock.
        OSError: If the lock file cannot be created (an unwritable folder).
    """
    path = lock_path(Path(target))
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # before unlocking: a waiter then finds the path gone and retries on a fresh file
        os.close(fd)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1  # Linux renameat2 flags
_RENAME_EXCHANGE = 2
_RENAME_SWAP = 2  # macOS renamex_np flags
_RENAME_EXCL = 4


def _libc_rename(src: Path, dst: Path, linux_flag: int, mac_flag: int) -> bool:
    """One flagged rename through libc; ``False`` where the call or the file system does not support the flag.

    Raises:
        OSError: Any other failure (``EEXIST`` for a no-replace rename onto an existing name).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    renameat2 = getattr(libc, "renameat2", None)
    renamex_np = getattr(libc, "renamex_np", None)
    a, b = os.fsencode(src), os.fsencode(dst)
    if renameat2 is not None:
        rc = renameat2(_AT_FDCWD, a, _AT_FDCWD, b, linux_flag)
    elif renamex_np is not None:
        rc = renamex_np(a, b, mac_flag)
    else:
        return False
    if rc == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` only if ``dst`` does not exist, atomically where the kernel can.

    ``os.rename`` alone would replace an existing file, or an empty directory when ``src`` is one. Where
    ``renameat2(RENAME_NOREPLACE)`` (Linux) or ``renamex_np(RENAME_EXCL)`` (macOS) is missing, the check and the
    rename run back to back; callers hold :func:`locked` so that no other ffnet-deploy process runs in between.

    Raises:
        FileExistsError: If ``dst`` exists.
    """
    if _libc_rename(src, dst, _RENAME_NOREPLACE, _RENAME_EXCL):
        return
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (``RENAME_EXCHANGE`` / ``RENAME_SWAP``).

    Returns:
        ``False`` where the platform or file system cannot; nothing was changed then.
    """
    return _libc_rename(a, b, _RENAME_EXCHANGE, _RENAME_SWAP)


# --------------------------------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------------------------------


def replace_refusal(path: Path, may_replace: Verdict | None) -> str | None:
    """Why the existing ``path`` must not be replaced by a file (``None``: it may, or it does not exist)."""
    if not (path.exists() or path.is_symlink()):
        return None
    if path.is_symlink():
        return "it is a symbolic link"
    if path.is_dir():
        return "it is a directory"
    return None if may_replace is None else may_replace(path)


@contextlib.contextmanager
def atomic_path(path: str | Path, component: str, error: type[FFNetDeployError] = ConfigError, *,
                may_replace: Verdict | None = None, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on any failure delete it.

    Args:
        path: The final file.
        component: Who writes, for the message (``"report"``, ``"checkpoint"``).
        error: The user-error type raised when the folder cannot be created or written.
        may_replace: Checked, under :func:`locked`, at the moment of the rename when ``path`` exists: a reason
            refuses to replace it. ``None`` replaces any file.
        overwrite: ``False`` refuses any existing ``path``, also one that appeared while the file was written.

    Raises:
        FFNetDeployError: (``error``) If the target folder is not writable, a write fails (the message names the
            file and the reason, e.g. ``no space left on device``), or ``path`` must not be replaced.
    """
    path = Path(path)
    with handle_signals():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
            with locked(path):  # no cleanup may see the new temporary before it is locked
                remove_stale_temporaries(path)
                # 0o666 & ~umask, as for any file a program creates; mkstemp's 0o600 hid results from other users
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                fcntl.flock(fd, fcntl.LOCK_EX)  # held while it lives: how a cleanup tells it from a killed writer's
        except OSError as err:
            raise error(f"{component} | cannot write {path}: {os_reason(err)}; {write_hint(err.errno)}") from None
        try:
            yield tmp
            _commit(tmp, path, component, error, may_replace, overwrite)
        except OSError as err:
            raise error(f"{component} | cannot write {path}: {os_reason(err)}; {write_hint(err.errno)}") from None
        finally:
            tmp.unlink(missing_ok=True)
            os.close(fd)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporaries of ``path`` (``.<name>.<8 hex>.tmp``) left by a killed writer: those nobody holds locked.

    Returns:
        The files removed.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}\.tmp")
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if not pattern.fullmatch(candidate.name) or candidate.is_symlink() or not candidate.is_file():
            continue
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            candidate.unlink()
            removed.append(candidate)
        except OSError:
            pass  # locked: a live writer's
        finally:
            os.close(fd)
    return removed


def _commit(tmp: Path, path: Path, component: str, error: type[FFNetDeployError], may_replace: Verdict | None,
            overwrite: bool) -> None:
    if overwrite and may_replace is None:
        os.replace(tmp, path)
        return
    with locked(path):
        if path.exists() or path.is_symlink():
            reason = "it already exists" if not overwrite else replace_refusal(path, may_replace)
            if reason:
                raise error(f"{component} | refusing to overwrite {path}: {reason}; choose another file")
            os.replace(tmp, path)
            return
        try:
            rename_noreplace(tmp, path)
        except FileExistsError:  # appeared between the check and the rename (without a lock of ours)
            raise error(f"{component} | refusing to overwrite {path}: it appeared while it was being written; "
                        "choose another file") from None


def write_text(path: str | Path, text: str, component: str, error: type[FFNetDeployError] = ConfigError, *,
               may_replace: Verdict | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (arguments: :func:`atomic_path`)."""
    with atomic_path(path, component, error, may_replace=may_replace) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes, component: str, error: type[FFNetDeployError] = ConfigError, *,
                may_replace: Verdict | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (arguments: :func:`atomic_path`)."""
    with atomic_path(path, component, error, may_replace=may_replace) as tmp:
        tmp.write_bytes(data)
    return Path(path)
