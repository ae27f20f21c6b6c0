"""The one atomic-write helper: files and folders appear whole under their final name or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.fileio import AtomicWriter, atomic_path, write_atomic
from tuneloop.store.blobs import BlobStore, TooLargeError


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_atomic_publishes_a_file_and_replaces_an_old_one(tmp_path: Path):
    dest = tmp_path / "sub" / "catalog.json"
    write_atomic(dest, "héllo")
    assert dest.read_text(encoding="utf-8") == "héllo"
    write_atomic(dest, b"\x00\xff")
    assert dest.read_bytes() == b"\x00\xff"
    assert _names(dest.parent) == ["catalog.json"]  # no temporary left beside it


def test_an_exception_leaves_the_file_untouched_and_no_temporary(tmp_path: Path):
    dest = tmp_path / "out.jsonl"
    dest.write_text("old")
    with pytest.raises(RuntimeError), AtomicWriter(dest) as out:
        out.file.write(b"half a line")
        raise RuntimeError("interrupted")
    assert dest.read_text() == "old" and _names(tmp_path) == ["out.jsonl"]
    with AtomicWriter(dest) as out:
        out.file.write(b"discarded")
        out.discard()
    assert dest.read_text() == "old" and _names(tmp_path) == ["out.jsonl"]


def test_the_destination_may_be_named_at_the_end_in_another_folder(tmp_path: Path):
    with AtomicWriter(tmp_path / "pending", tmp_dir=tmp_path) as out:
        out.file.write(b"abc")
        out.dest = tmp_path / "ab" / "abc"
    assert (tmp_path / "ab" / "abc").read_bytes() == b"abc" and _names(tmp_path) == ["ab"]


def test_atomic_path_publishes_a_folder(tmp_path: Path):
    dest = tmp_path / "model"
    with atomic_path(dest, directory=True) as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path and not dest.exists()
        (tmp / "config.json").write_text("{}")
    assert _names(dest) == ["config.json"] and _names(tmp_path) == ["model"]


def test_atomic_path_replaces_an_existing_folder(tmp_path: Path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "stale.bin").write_bytes(b"old")
    with atomic_path(dest, directory=True) as tmp:
        (tmp / "weights.safetensors").write_bytes(b"new")
    assert _names(dest) == ["weights.safetensors"] and _names(tmp_path) == ["model"]


def test_atomic_path_exception_leaves_the_folder_untouched(tmp_path: Path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "config.json").write_text("old")
    with pytest.raises(ValueError), atomic_path(dest, directory=True) as tmp:
        (tmp / "config.json").write_text("new")
        raise ValueError("conversion failed")
    assert (dest / "config.json").read_text() == "old" and _names(tmp_path) == ["model"]
    with pytest.raises(ValueError), atomic_path(tmp_path / "file.bin") as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError("write failed")
    assert _names(tmp_path) == ["model"]


def test_blob_store_keeps_nothing_of_a_too_large_upload(tmp_path: Path):
    store = BlobStore(tmp_path / "blobs")
    sha, size = store.put_bytes(b"hello")
    assert size == 5 and store.path(sha).read_bytes() == b"hello"
    with pytest.raises(TooLargeError):
        store.put_stream([b"12345", b"6"], max_bytes=5)
    assert [p.relative_to(store.root) for p in store.root.rglob("*") if p.is_file()] == [Path(sha[:2]) / sha]


def test_clear_leftovers_removes_the_temporaries_of_dead_writers_and_this_one_only(tmp_path):
    import os

    from tuneloop.fileio import clear_leftovers

    dest = tmp_path / "upload"
    dead = tmp_path / ".upload.99999999.0a1b2c3d.tmp"  # beyond any pid_max: its writer is gone
    ours = tmp_path / f".upload.{os.getpid()}.0a1b2c3d.tmp"  # a restart that reused the pid
    live = tmp_path / f".upload.{os.getppid()}.0a1b2c3d.tmp"  # another live process: still writing
    other = tmp_path / ".uploads.99999999.0a1b2c3d.tmp"  # another destination's
    for path in (dead, ours, live, other):
        path.write_bytes(b"partial")
    (tmp_path / ".upload.99999999.dir.tmp").mkdir()  # atomic_path's folders too
    assert clear_leftovers(dest) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
