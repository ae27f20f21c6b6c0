"""Content-addressed blob storage: a file's bytes live at ``blobs/ab/abcdef...`` (its sha256)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from tuneloop.errors import TuneloopError
from tuneloop.fileio import AtomicWriter, clear_leftovers


class TooLargeError(TuneloopError):
    """An upload larger than the configured limit."""


class BlobStore:
    """Stores immutable byte blobs by their sha256."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, sha256: str) -> Path:
        """Where the blob with this digest lives."""
        return self.root / sha256[:2] / sha256

    def put_stream(self, stream: BinaryIO | Iterable[bytes], max_bytes: int) -> tuple[str, int]:
        """Store a stream; return (sha256, size). Raises TooLargeError past ``max_bytes``
        (nothing is kept). Written to a temporary file and renamed, so a blob is never partial."""
        digest, size = hashlib.sha256(), 0
        # the blob's name is its digest, known only at the end: write under a temporary name in root
        with AtomicWriter(self.root / "upload", tmp_dir=self.root) as out:
            chunks = iter(lambda: stream.read(1 << 20), b"") if hasattr(stream, "read") else stream
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLargeError(f"file is larger than the {max_bytes:,}-byte limit")
                digest.update(chunk)
                out.file.write(chunk)
            sha = digest.hexdigest()
            out.dest = self.path(sha)
        return sha, size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store bytes; return (sha256, size)."""
        return self.put_stream([data], max_bytes=len(data))

    def clear_leftovers(self) -> int:
        """Remove the partial uploads of processes that died mid-write (a kill, a crash); return how many."""
        return clear_leftovers(self.root / "upload", tmp_dir=self.root)

    def delete(self, sha256: str) -> None:
        """Remove a blob (callers check that nothing references it)."""
        self.path(sha256).unlink(missing_ok=True)
