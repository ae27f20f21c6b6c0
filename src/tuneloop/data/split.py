"""Split a JSONL training file into train and validation files, deterministically.

How an example's side is chosen: each example is identified by the BLAKE2b digest of its
canonical JSON (keys sorted, no spaces), and ranked by a second hash of that digest salted with
the seed. The ``round(fraction · n)`` lowest-ranked examples (half rounds up) go to validation,
the rest to training. So:

- the same file and seed always give byte-identical outputs;
- the split does not depend on line order, and an example's side depends only on its own content
  and where its hash falls among the others': adding or removing a few lines moves at most a few
  examples across the boundary;
- the validation count is exact.

The input is read twice, streaming: the first pass checks every line and keeps 8 bytes per
example (24 with ``dedupe``), the second copies each line's original bytes to its side, in input
order. ``dedupe`` keeps the first of each set of examples with the same canonical JSON. Blank lines
are ignored; any invalid line stops the split before anything is written.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path

import numpy as np

from tuneloop.data.convert import MAX_LISTED_ISSUES, LineIssue
from tuneloop.data.records import json_error, loads_strict, same_file
from tuneloop.errors import TuneloopError
from tuneloop.fileio import AtomicWriter

_BOM = b"\xef\xbb\xbf"
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class SplitError(TuneloopError):
    """The split cannot run: missing input, bad fraction, output paths that clash."""

    exit_code = 2


class InvalidLinesError(TuneloopError):
    """The input has invalid lines, so nothing was written."""

    exit_code = 1


@dataclass
class SplitReport:
    """What a split did (or, with invalid lines, why it wrote nothing)."""

    src: Path
    train_out: Path
    valid_out: Path
    #: Valid, non-blank lines read.
    examples: int = 0
    #: Exact duplicates dropped (with ``dedupe``).
    duplicates: int = 0
    train: int = 0
    valid: int = 0
    #: The first ``MAX_LISTED_ISSUES`` invalid lines.
    invalid: list[LineIssue] = field(default_factory=list)
    #: All invalid lines; when non-zero, nothing was written.
    invalid_count: int = 0

    @property
    def written(self) -> bool:
        """Whether the two output files were written."""
        return self.invalid_count == 0

    def flag(self, line: int, reason: str) -> None:
        """Record an invalid line."""
        self.invalid_count += 1
        if len(self.invalid) < MAX_LISTED_ISSUES:
            self.invalid.append(LineIssue(line, reason))


def default_split_paths(src: Path) -> tuple[Path, Path]:
    """``<stem>.train.jsonl`` and ``<stem>.valid.jsonl`` next to the input."""
    return src.with_name(f"{src.stem}.train.jsonl"), src.with_name(f"{src.stem}.valid.jsonl")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without a leading BOM) for each non-blank line."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1:
                raw = raw.removeprefix(_BOM)
            if raw.strip():
                yield number, raw


def _problem(raw: bytes) -> tuple[str | None, bytes]:
    """(reason the line is invalid or None, 16-byte digest of its canonical JSON)."""
    try:
        obj = loads_strict(raw.rstrip(b"\r\n").decode("utf-8"))
    except UnicodeDecodeError:
        return "not valid UTF-8", b""
    except ValueError as exc:
        return json_error(exc), b""
    if not isinstance(obj, dict):
        return "not a JSON object", b""
    canonical = _CANONICAL.encode(obj)
    return None, blake2b(canonical.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _scan(report: SplitReport, seed: int, dedupe: bool) -> tuple[array, bytearray]:
    """First pass: validate every line; per example its seeded rank key (and digest for dedupe)."""
    salt = f"tuneloop-split:{seed}:".encode()
    keys = array("Q")
    digests = bytearray()
    for number, raw in _lines(report.src):
        reason, digest = _problem(raw)
        if reason is not None:
            report.flag(number, reason)
            continue
        keys.append(int.from_bytes(blake2b(salt + digest, digest_size=8).digest(), "big"))
        if dedupe:
            digests += digest
    report.examples = len(keys)
    return keys, digests


def _sides(keys: array, digests: bytearray, fraction: float, dedupe: bool) -> tuple[np.ndarray, int]:
    """Per example 0 (dropped duplicate), 1 (train) or 2 (valid), and the number of duplicates."""
    n = len(keys)
    kept = np.arange(n)
    if dedupe and n:
        pairs = np.frombuffer(digests, dtype=">u8").reshape(n, 2)
        _, first = np.unique(pairs, axis=0, return_index=True)
        kept = np.sort(first)
    sides = np.zeros(n, dtype=np.int8)
    sides[kept] = 1
    n_valid = int(np.floor(fraction * len(kept) + 0.5))
    ranked = kept[np.argsort(np.frombuffer(keys, dtype=np.uint64)[kept], kind="stable")]
    sides[ranked[:n_valid]] = 2
    return sides, n - len(kept)


def _write(report: SplitReport, sides: np.ndarray) -> None:
    """Second pass: copy each line's bytes to its side, atomically replacing both outputs."""
    with AtomicWriter(report.train_out) as train, AtomicWriter(report.valid_out) as valid:
        outs = {1: train.file, 2: valid.file}
        index = -1
        for index, (_, raw) in enumerate(_lines(report.src)):
            if index >= len(sides):
                break
            side = int(sides[index])
            if side:
                outs[side].write(raw if raw.endswith(b"\n") else raw + b"\n")
        if index + 1 != len(sides):
            raise SplitError(f"{report.src} changed while it was being split; nothing written")


def _check(src: Path, train_out: Path, valid_out: Path, valid_fraction: float) -> None:
    if not src.exists():
        raise SplitError(f"{src}: no such file")
    if not src.is_file():
        raise SplitError(f"{src}: not a file")
    if not 0.0 <= valid_fraction <= 1.0:
        raise SplitError(f"the validation fraction must be between 0 and 1, not {valid_fraction}")
    for out in (train_out, valid_out):
        if same_file(src, out):
            raise SplitError(f"{out}: the output would overwrite the input; choose another output path")
        if out.is_dir():
            raise SplitError(f"{out}: is a folder; name the output file")
    if same_file(train_out, valid_out):
        raise SplitError(f"{train_out}: the train and validation outputs must be different files")


def split_file(
    src: Path,
    train_out: Path,
    valid_out: Path,
    valid_fraction: float = 0.1,
    seed: int = 0,
    dedupe: bool = False,
) -> SplitReport:
    """Split ``src`` into ``train_out`` and ``valid_out`` (see the module docstring for how).

    Returns the report; when ``report.invalid_count`` is non-zero nothing was written.
    """
    _check(src, train_out, valid_out, valid_fraction)
    report = SplitReport(src, train_out, valid_out)
    keys, digests = _scan(report, seed, dedupe)
    if report.invalid_count:
        return report
    if not report.examples:
        raise SplitError(f"{src}: no examples to split")
    sides, report.duplicates = _sides(keys, digests, valid_fraction, dedupe)
    report.train = int(np.count_nonzero(sides == 1))
    report.valid = int(np.count_nonzero(sides == 2))
    _write(report, sides)
    return report
