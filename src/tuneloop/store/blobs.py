"""Content-addressed blob storage: a file's bytes live at ``blobs/ab/abcdef...`` (its sha256)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from tuneloop.errors import TuneloopError


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
        self.root.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                chunks = iter(lambda: stream.read(1 << 20), b"") if hasattr(stream, "read") else stream
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLargeError(f"file is larger than the {max_bytes:,}-byte limit")
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            dest = self.path(sha)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            return sha, size
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store bytes; return (sha256, size)."""
        return self.put_stream([data], max_bytes=len(data))

    def delete(self, sha256: str) -> None:
        """Remove a blob (callers check that nothing references it)."""
        self.path(sha256).unlink(missing_ok=True)
