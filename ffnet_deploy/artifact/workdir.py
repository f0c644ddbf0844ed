"""Atomic artifact directories: build in a private folder next to the output, then rename it into place.

The rules, each checked again at the moment it matters:

* **What may be replaced.** ``--force`` replaces only an ffnet-deploy artifact directory: one whose
  ``manifest.json`` :func:`~ffnet_deploy.artifact.manifest.read_manifest` accepts and that holds nothing its
  manifest does not list, so a user's own files are never deleted. The output may never be, or contain, an input
  (the checkpoint) or the current folder.
* **Publishing is atomic and re-checked.** :func:`publish` holds the output's lock file (:func:`~ffnet_deploy.atomic.
  locked`) across the check and the rename; a new output is renamed with ``RENAME_NOREPLACE``, so of two exports to
  the same output exactly one wins. A ``--force`` replacement swaps the two directories in one step
  (``RENAME_EXCHANGE``), so the output holds the old or the new complete artifact at every instant. Where the file
  system cannot swap, the old one is first moved aside to ``.<output>.old-<pid>-<token>``; if the process dies
  before the new one is in place, the next export (or :func:`recover`) moves the old one back.
* **Liveness is a lock, not a PID.** A work directory ``.<output>.tmp-<pid>-<token>`` is ``flock``-ed (on the
  directory itself, so nothing extra lands in the artifact) for its whole life. Cleanup deletes only those whose
  lock it can take: their process is gone, whatever PID namespace it ran in (the PID in the name is for people).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from ffnet_deploy.artifact.manifest import MANIFEST_NAME, ManifestError, read_manifest
from ffnet_deploy.atomic import exchange, locked, os_reason, rename_noreplace
from ffnet_deploy.errors import ExportError, Interrupted
from ffnet_deploy.interrupts import deferred, raise_pending


def _absolute(path: Path) -> Path:
    # abspath, not resolve: '-o link' names the link, which must not be followed into someone else's folder
    return Path(os.path.abspath(path))


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def artifact_refusal(path: Path) -> str | None:
    """Why ``path`` is not an artifact directory that ``--force`` may replace (``None``: it is one).

    An artifact directory holds a ``manifest.json`` that :func:`read_manifest` accepts, and nothing else than the
    files that manifest lists (and the folders that hold them).
    """
    if path.is_symlink():
        return "it is a symbolic link"
    if not path.is_dir():
        return "it is not a directory"
    try:
        manifest = read_manifest(path)
    except ManifestError:
        return "it has no manifest.json that ffnet-deploy can read"
    listed = {Path(name).as_posix() for name in manifest.files} | {MANIFEST_NAME}
    folders = {parent.as_posix() for name in listed for parent in Path(name).parents if parent != Path(".")}
    for entry in sorted(path.rglob("*")):
        rel = entry.relative_to(path).as_posix()
        ours = rel in folders if entry.is_dir() and not entry.is_symlink() else rel in listed
        if not ours:
            return f"it holds {rel}, which its manifest does not list"
    return None


def check_output(output: Path, force: bool, inputs: Sequence[Path] = ()) -> Path:
    """Refuse an output that must not be written: an existing one without ``force``, anything but an artifact
    directory with it, an input or a folder that contains one, the current folder, an unwritable folder.

    Runs :func:`recover` first, so a replacement interrupted by a crash is undone before anything is decided.

    Args:
        output: The artifact directory to create or replace.
        force: Whether an existing artifact directory may be replaced.
        inputs: Files the export reads (the checkpoint); the output may not be one of them or hold one.

    Returns:
        The absolute output path.

    Raises:
        ExportError: One message for each case, saying what to do.
    """
    given, output = output, _absolute(output)
    resolved = output.resolve()
    cwd = Path.cwd().resolve()
    if output == output.parent or cwd == resolved or cwd.is_relative_to(resolved):
        raise ExportError(f"export | --output {given} is the current folder or one that holds it; name a new "
                          "directory for the artifact")
    for source in inputs:
        src = _absolute(Path(source)).resolve()
        if src == resolved or src.is_relative_to(resolved):
            raise ExportError(f"export | --output {given} is or holds the input {source}; name a new directory for "
                              "the artifact")
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"export | cannot create the output folder {parent}: {os_reason(err)}; choose a writable "
                          "--output") from None
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"export | cannot write to {parent} (permission denied); choose a writable --output")
    with _locked(output):
        recover(output, locked=True)
        _check_replaceable(output, force, given)
    return output


def _check_replaceable(output: Path, force: bool, given: Path, appeared: bool = False) -> None:
    if not _exists(output):
        return
    if not force:
        if appeared:
            raise ExportError(f"export | {given} appeared while this export ran (another export to it?); nothing was "
                              "written: pass --force to replace it")
        raise ExportError(f"export | {given} already exists; pass --force to replace it")
    reason = artifact_refusal(output)
    if reason:
        raise ExportError(f"export | refusing to replace {given}: {reason}; --force replaces only an artifact "
                          "directory written by ffnet-deploy, so move or delete it yourself, or choose another "
                          "--output")


@contextlib.contextmanager
def _locked(output: Path) -> Iterator[None]:
    """:func:`~ffnet_deploy.atomic.locked`, with a lock file that cannot be created reported as a user error."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locked(output))
        except OSError as err:
            raise ExportError(f"export | cannot lock {output}: {os_reason(err)}; choose a writable --output") \
                from None
        yield


def _holds_lock(path: Path) -> int | None:
    """Take the directory's lock without waiting; the open descriptor, or ``None`` when its owner still runs."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # not a directory we made, or unreadable: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _work_entries(output: Path, kind: str) -> list[Path]:
    prefix = f".{output.name}.{kind}-"
    return sorted(p for p in output.parent.glob(f".{output.name}.{kind}-*")
                  if p.name[len(prefix):].split("-", 1)[0].isdigit())


def recover(output: Path, *, locked: bool = False) -> list[Path]:
    """Clean up after exports to ``output`` that died: restore, then remove what no live process holds.

    * ``.<output>.old-*`` (a ``--force`` replacement killed between its two renames): if ``output`` is missing,
      the newest one is renamed back into place, since it is the only complete copy; otherwise it is deleted.
    * ``.<output>.tmp-*`` whose lock can be taken (its process is gone) is deleted; a locked one is left alone.

    Args:
        output: The artifact directory.
        locked: Whether the caller already holds the output's lock (a second ``flock`` would wait on itself).

    Returns:
        The directories removed.
    """
    if not locked:
        with _locked(_absolute(output)):
            return recover(output, locked=True)
    output = _absolute(output)
    removed: list[Path] = []
    olds = _work_entries(output, "old")
    if olds and not _exists(output):
        newest = max(olds, key=lambda p: p.stat().st_mtime_ns)
        os.rename(newest, output)
        olds.remove(newest)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    for tmp in _work_entries(output, "tmp"):
        fd = _holds_lock(tmp)
        if fd is None:
            continue
        try:
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(tmp)
    return removed


def remove_stale_workdirs(output: Path) -> list[Path]:
    """Delete temporary directories of earlier exports to ``output`` that no live process holds (:func:`recover`).

    Returns:
        The directories removed.
    """
    return recover(output)


@contextlib.contextmanager
def workdir_for(output: Path) -> Iterator[Path]:
    """A private, locked work directory next to ``output``, deleted if the block fails or is interrupted.

    After :func:`publish` the directory is the output; its lock is released when the block ends.

    Raises:
        ExportError: If the directory cannot be created.
    """
    output = _absolute(output)
    with _locked(output):
        recover(output, locked=True)
        path = output.parent / f".{output.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
        except OSError as err:
            raise ExportError(f"export | cannot create {path}: {os_reason(err)}; choose a writable --output") from None
        fd = _holds_lock(path)  # taken before the output lock is released, so no cleanup sees it unlocked
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)  # one seam, so that tests can crash between the two renames of the fallback


def publish(workdir: Path, output: Path, force: bool = False) -> None:
    """Rename the finished ``workdir`` to ``output``, re-checking under the output's lock that it may.

    A new output is renamed without replacing anything that appeared meanwhile. With ``force``, an existing artifact
    directory is swapped out in one step and then deleted. Signals that arrive meanwhile are raised before the
    rename (nothing published) or after it (published, and :attr:`Interrupted.kept` says so).

    Raises:
        ExportError: If ``output`` appeared meanwhile (without ``force``), is not an artifact directory, or the rename
            fails; ``workdir`` is left for the caller to delete.
    """
    output = _absolute(output)
    done = False
    try:
        with _locked(output), deferred():
            _check_replaceable(output, force, output, appeared=True)
            raise_pending()  # the last moment at which an interrupt leaves everything as it was
            try:
                if not _exists(output):
                    rename_noreplace(workdir, output)
                elif exchange(workdir, output):
                    done = True
                    shutil.rmtree(workdir, ignore_errors=True)  # the old artifact, now under the work name
                else:
                    old = output.parent / f".{output.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
                    _rename(output, old)
                    try:
                        _rename(workdir, output)
                    except OSError:
                        _rename(old, output)
                        raise
                    done = True
                    shutil.rmtree(old, ignore_errors=True)
                done = True
            except FileExistsError:
                _check_replaceable(output, False, output, appeared=True)
                raise
            except OSError as err:
                raise ExportError(f"export | cannot move the finished artifact to {output}: {os_reason(err)}") \
                    from None
    except Interrupted as err:
        if done:
            err.kept = f"the artifact was already complete in {output}"
        raise
