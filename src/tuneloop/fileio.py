"""Atomic writes: every file or folder tuneloop writes appears whole under its final name or not at all.

One rule for all of them: write under a temporary name beside the destination (same filesystem),
then ``os.replace`` it over the destination on a clean exit; on an exception the temporary is
removed and the destination is untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import BinaryIO


def temporary_sibling(dest: Path, tmp_dir: Path | None = None) -> Path:
    """A fresh temporary name beside ``dest`` (or in ``tmp_dir``, which must be on the same filesystem)."""
    return (tmp_dir or dest.parent) / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def clear_leftovers(dest: Path, tmp_dir: Path | None = None) -> int:
    """Remove what killed writers of ``dest`` left: the temporaries of :func:`temporary_sibling`
    (``.<name>.<pid>.<hex>.tmp``) whose process is gone, or is this one (a restart may reuse a
    pid); those of another live process (a second server on the same home) stay. Return how many."""
    folder, removed = tmp_dir or dest.parent, 0
    for leftover in folder.glob(f".{dest.name}.*.tmp") if folder.is_dir() else ():
        pid = leftover.name[len(dest.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            _remove(leftover)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _publish(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` over ``dest`` (a folder destination is removed first: folders cannot be replaced)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if tmp.is_dir() and dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


@contextmanager
def atomic_path(dest: Path, *, directory: bool = False, tmp_dir: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path to write (a created folder with ``directory``); it becomes ``dest`` on a
    clean exit. For writers that want a path, not a file object (safetensors, ``save_pretrained``)."""
    (tmp_dir or dest.parent).mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(dest, tmp_dir)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        _publish(tmp, dest)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


class AtomicWriter:
    """A binary file written under a temporary name and renamed over ``dest`` on a clean exit.

    On an exception, or after ``discard()``, the temporary file is removed and ``dest`` is untouched.
    ``dest`` may be set inside the block (a content-addressed blob learns its name at the end).
    """

    def __init__(self, dest: Path, tmp_dir: Path | None = None):
        self.dest = dest
        self.tmp_dir = tmp_dir or dest.parent
        self.tmp = temporary_sibling(dest, self.tmp_dir)
        self._discarded = False
        self.file: BinaryIO

    def __enter__(self) -> AtomicWriter:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self.file = os.fdopen(fd, "wb")
        return self

    def discard(self) -> None:
        """Do not replace ``dest`` when the block ends."""
        self._discarded = True

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None and not self._discarded:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                _publish(self.tmp, self.dest)
        finally:
            self.file.close()
            self.tmp.unlink(missing_ok=True)


def write_atomic(dest: Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``dest`` atomically."""
    with AtomicWriter(dest) as out:
        out.file.write(data.encode("utf-8") if isinstance(data, str) else data)


#: Beside a folder's files (a trained adapter's weights): their sha256, checked when they are read.
CHECKSUMS_FILE = "checksums.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: Path, names: list[str]) -> None:
    """Record the sha256 of ``folder``'s files ``names`` (those present) in its ``checksums.json``."""
    sums = {name: file_sha256(folder / name) for name in names if (folder / name).is_file()}
    write_atomic(folder / CHECKSUMS_FILE, json.dumps(sums, indent=2))


def changed_since_checksummed(folder: Path) -> list[str]:
    """The files of ``folder`` whose bytes differ from its ``checksums.json`` (an unreadable record
    counts as every file changed); none where it has no record."""
    record = folder / CHECKSUMS_FILE
    if not record.is_file():
        return []
    try:
        sums = json.loads(record.read_text(encoding="utf-8"))
        return [n for n, sha in sums.items() if not (folder / n).is_file() or file_sha256(folder / n) != sha]
    except (OSError, ValueError, AttributeError, TypeError):
        return [p.name for p in folder.iterdir() if p.name != CHECKSUMS_FILE]
