"""Outputs that appear complete or not at all.

Every file and folder popkin writes for a user goes through this module. The content is written
to a hidden temporary beside the target (``.NAME.XXXX.tmp``) and renamed into place once it is
complete, so a reader, a crash or a full disk never leaves half a file under the target's name.
The temporaries are removed when the writing fails, on Ctrl-C (SIGINT) and on SIGTERM (how batch
schedulers stop jobs), and what appears gets the permissions the user's umask gives, not the
private 0600/0700 of a temporary.

The signal handlers are installed only while a temporary exists (and only from the main
thread), so a long computation before the writing is stopped by SIGTERM as promptly as ever.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

__all__ = ["staged_file", "staged_folder", "write_file", "write_folder"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_lock = threading.RLock()
_pending: set[Path] = set()
_previous: dict[int, object] = {}       # the handlers ours replaced, while ours are installed


def write_file(path: str | os.PathLike, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` so that it appears complete or not at all.

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_file(folder / "a.txt", "complete").read_text()
    'complete'
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt']
    """
    with staged_file(path) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content, encoding="utf-8")
    return Path(path)


def write_folder(directory: str | os.PathLike, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (a path relative to ``directory`` -> its content) into ``directory``,
    all of them together or none (:func:`staged_folder`).

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "out"
    >>> _ = write_folder(folder, {"a.json": b"{}", "ID_1/report.html": b"<p></p>"})
    >>> sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    ['ID_1', 'ID_1/report.html', 'a.json']
    """
    with staged_folder(directory) as staging:
        for name, content in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return Path(directory)


@contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` to write to; renamed to ``path`` when the block
    ends without an exception, removed otherwise.

    The temporary keeps the target's suffix (``.report.k2x9.tmp.png`` for ``report.png``), so
    writers that choose a format by suffix (matplotlib, pandas) choose the target's.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; a file of that name cannot be written")
    created = _make_folders(path.parent)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}",
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    with _tracked(tmp, created):
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)


@contextmanager
def staged_folder(directory: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary folder beside ``directory`` to write into; when the block ends without
    an exception its contents move into ``directory`` (created if absent: then the whole folder
    appears at once; if present, entries of the same names are replaced and others kept).
    Removed, with everything in it, otherwise."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a folder")
    created = _make_folders(directory.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp",
                                    dir=directory.parent))
    with _tracked(staging, created):
        yield staging
        _set_modes(staging)
        if not directory.exists():
            os.replace(staging, directory)
        else:
            for item in staging.iterdir():
                target = directory / item.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(item, target)


@contextmanager
def _tracked(temporary: Path, created: list[Path]) -> Iterator[None]:
    """Keep ``temporary`` on the list the signal handlers clean up until the block ends; then
    remove it, and if the block failed also the folders ``created`` for it."""
    _register(temporary)
    done = False
    try:
        yield
        done = True
    finally:
        _discard(temporary)
        if not done:
            _remove_folders(created)


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, innermost first."""
    created = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _remove_folders(created: list[Path]) -> None:
    """Remove the folders a failed write created, if nothing else was put there meanwhile."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            break


def _set_modes(root: Path) -> None:
    """The modes the user's umask gives to what ``root`` holds (mkdtemp makes folders 0700)."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, subfolders, files in os.walk(root):
        for name in subfolders:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def _umask() -> int:
    # read without changing it where the system tells it (another thread may be creating files)
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


# -- cleaning up on signals ---------------------------------------------------------------------

def _register(path: Path) -> None:
    with _lock:
        _pending.add(path)
        if threading.current_thread() is threading.main_thread() and not _previous:
            for sig in _SIGNALS:
                previous = signal.getsignal(sig)
                if previous == signal.SIG_IGN:
                    continue            # ignored (nohup, a background job): the write goes on
                _previous[sig] = previous
                signal.signal(sig, _on_signal)


def _discard(path: Path) -> None:
    _remove(path)
    with _lock:
        _pending.discard(path)
        if not _pending and _previous and threading.current_thread() is threading.main_thread():
            for sig, handler in _previous.items():
                if signal.getsignal(sig) is _on_signal:
                    signal.signal(sig, handler)
            _previous.clear()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _on_signal(signum, frame) -> None:
    with _lock:
        for path in list(_pending):
            _remove(path)
        previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)          # SIGINT's default raises KeyboardInterrupt
    elif previous != signal.SIG_IGN:
        # end as the default action would, so the parent sees the signal in the exit status
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
