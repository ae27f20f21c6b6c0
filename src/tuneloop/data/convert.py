"""Convert Alpaca, ShareGPT, prompt/completion and CSV files into OpenAI chat JSONL.

Input is streamed record by record (JSONL line by line, a JSON array element by element, CSV row
by row), so memory stays flat however large the file. Each record becomes one
``{"messages": [...]}`` line (plus ``tools`` for ShareGPT function calling) or is skipped with a
reason and its 1-based line number (CSV: row number, the header being row 1). Output is written
to a temporary file next to the destination and renamed into place only when at least one
example converted, so a failed run never leaves a half-written file, and the input is never
overwritten.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.records import Invalid, JsonArrayReader, iter_jsonl, loads_strict, same_file
from tuneloop.errors import TuneloopError
from tuneloop.fileio import AtomicWriter

SOURCE_FORMATS = ("alpaca", "sharegpt", "completion", "csv")
#: Reports keep this many skipped lines in full; the rest are only counted (memory stays flat).
MAX_LISTED_ISSUES = 1000

#: ShareGPT ``from`` values → what they become ("function_call"/"observation" become tool calls/results).
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "function_call": "function_call",
    "observation": "observation",
    "tool": "observation",
}
#: CSV columns tried (case-insensitively, in order) when no column is named explicitly.
USER_COLUMNS = ("user", "prompt", "question", "input", "instruction")
ASSISTANT_COLUMNS = ("assistant", "completion", "answer", "response", "output")

Chat = dict[str, Any]


class ConvertError(TuneloopError):
    """Conversion cannot run: missing input, unknown or undetectable format, unsafe output path."""

    exit_code = 2


class NothingConvertedError(TuneloopError):
    """Every record of the input was skipped, so no output was written."""

    exit_code = 1


@dataclass(frozen=True)
class LineIssue:
    """One skipped or invalid record: its 1-based line (CSV: row) number and why."""

    line: int
    reason: str


@dataclass(frozen=True)
class ConvertOptions:
    """How records map to chat messages."""

    #: System prompt for examples that do not carry their own.
    system: str | None = None
    #: CSV column with the user message (default: first of ``USER_COLUMNS`` present).
    user_column: str | None = None
    #: CSV column with the assistant reply (default: first of ``ASSISTANT_COLUMNS`` present).
    assistant_column: str | None = None
    #: CSV column with a per-row system prompt (empty cells fall back to ``system``).
    system_column: str | None = None
    #: CSV field delimiter (default: tab for ``.tsv`` files, comma otherwise).
    delimiter: str | None = None


@dataclass
class ConvertReport:
    """What a conversion did."""

    source_format: str
    dest: Path
    #: Non-blank records read.
    read: int = 0
    #: Examples written to ``dest``.
    written: int = 0
    #: The first ``MAX_LISTED_ISSUES`` skipped records, in file order.
    skipped: list[LineIssue] = field(default_factory=list)
    #: All skipped records.
    skipped_count: int = 0

    @property
    def unit(self) -> str:
        """What ``LineIssue.line`` counts: CSV rows or file lines."""
        return "row" if self.source_format == "csv" else "line"

    def skip(self, line: int, reason: str) -> None:
        """Record a skipped record."""
        self.skipped_count += 1
        if len(self.skipped) < MAX_LISTED_ISSUES:
            self.skipped.append(LineIssue(line, reason))


class _Skip(Exception):
    """Raised by the record converters: this record cannot become a chat example."""


# --- reading records -------------------------------------------------------------------------


def _starts_with_bracket(path: Path) -> bool:
    with path.open("r", encoding="utf-8-sig", errors="replace") as f:
        while chunk := f.read(4096):
            if stripped := chunk.lstrip():
                return stripped[0] == "["
    return False


def iter_json_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Records of a JSONL file, or the elements of a file holding one JSON array."""
    if not _starts_with_bracket(path):
        yield from iter_jsonl(path)
        return
    with path.open("r", encoding="utf-8-sig") as f:
        try:
            yield from JsonArrayReader(f).elements()
        except UnicodeDecodeError as exc:
            raise ConvertError(f"{path}: not UTF-8 text") from exc


# --- format detection ------------------------------------------------------------------------


def _format_from_keys(obj: dict, path: Path) -> str:
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj:
        return "alpaca"
    if "prompt" in obj or "completion" in obj:
        return "completion"
    if "messages" in obj:
        raise ConvertError(f"{path} is already in OpenAI chat format ('messages'); there is nothing to convert")
    keys = ", ".join(list(obj)[:8]) or "none"
    raise ConvertError(
        f"cannot detect the format of {path} from the keys of its first object ({keys}); "
        f"pass --from {'|'.join(SOURCE_FORMATS)}"
    )


def detect_source_format(path: Path) -> str:
    """``csv`` for .csv/.tsv files, else the format told by the keys of the first JSON object."""
    if path.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    for _, record in iter_json_records(path):
        if isinstance(record, dict):
            return _format_from_keys(record, path)
    raise ConvertError(f"{path}: no JSON object to detect the format from; pass --from {'|'.join(SOURCE_FORMATS)}")


# --- record converters -----------------------------------------------------------------------


def _text(obj: dict, key: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _Skip(f"missing field '{key}'")
        return None
    if not isinstance(value, str):
        raise _Skip(f"field '{key}' is not a string")
    return value


def _nonempty(value: str | None, what: str) -> str:
    if not value or not value.strip():
        raise _Skip(f"empty {what}")
    return value


def _object(record: Any) -> dict:
    if not isinstance(record, dict):
        raise _Skip("not a JSON object")
    return record


def _finish(messages: list[dict], system: str | None, tools: list | None = None) -> Chat:
    """Prepend the system prompt when the example has none; require something to train on."""
    if not any(m["role"] == "assistant" for m in messages):
        raise _Skip("no assistant message")
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    chat: Chat = {"messages": messages}
    if tools:
        chat["tools"] = tools
    return chat


def _history(obj: dict) -> list[dict]:
    history = obj.get("history") or []
    pairs_ok = isinstance(history, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in history
    )
    if not pairs_ok:
        raise _Skip("field 'history' is not a list of [user, assistant] pairs")
    out: list[dict] = []
    for user, assistant in history:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return out


def alpaca_to_chat(record: Any, system: str | None = None) -> Chat:
    """``instruction`` (+ ``input`` after a blank line) → user, ``output`` → assistant.

    An optional ``system`` field wins over the default system prompt; an optional ``history``
    of [user, assistant] pairs becomes the earlier turns.
    """
    obj = _object(record)
    instruction = _text(obj, "instruction") or ""
    extra = _text(obj, "input", required=False) or ""
    output = _text(obj, "output")
    own_system = _text(obj, "system", required=False)
    user = "\n\n".join(part for part in (instruction, extra) if part.strip())
    messages = _history(obj) + [
        {"role": "user", "content": _nonempty(user, "'instruction' and 'input'")},
        {"role": "assistant", "content": _nonempty(output, "'output'")},
    ]
    if own_system and own_system.strip():
        messages.insert(0, {"role": "system", "content": own_system})
    return _finish(messages, system)


def completion_to_chat(record: Any, system: str | None = None) -> Chat:
    """``prompt`` → user, ``completion`` → assistant (text kept verbatim)."""
    obj = _object(record)
    prompt, completion = _text(obj, "prompt"), _text(obj, "completion")
    messages = [
        {"role": "user", "content": _nonempty(prompt, "'prompt'")},
        {"role": "assistant", "content": _nonempty(completion, "'completion'")},
    ]
    return _finish(messages, system)


def _sharegpt_tools(raw: Any) -> list | None:
    """LLaMA-Factory's ``tools`` (a JSON string or list of function definitions) as OpenAI tools."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            raw = loads_strict(raw)
        except ValueError:
            raise _Skip("field 'tools' is not valid JSON") from None
    if not isinstance(raw, list):
        raise _Skip("field 'tools' is not a list")
    tools = []
    for tool in raw:
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            tools.append(tool)
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str):
            tools.append({"type": "function", "function": tool})
        else:
            raise _Skip("field 'tools' is not a list of function definitions")
    return tools or None


class _ToolCalls:
    """Ids for one conversation's function calls, and the calls still waiting for a result."""

    def __init__(self) -> None:
        self.issued = 0
        self.pending: deque[str] = deque()

    def call_message(self, value: str, turn: int) -> dict:
        """A ``function_call`` turn (``{"name", "arguments"}`` or a list of them) as assistant tool_calls."""
        bad = _Skip(f"turn {turn} (function_call) is not a JSON object with a function 'name'")
        try:
            parsed = loads_strict(value)
        except ValueError:
            raise bad from None
        calls = parsed if isinstance(parsed, list) else [parsed]
        if not calls or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
            raise bad
        tool_calls = []
        for call in calls:
            self.issued += 1
            call_id = f"call_{self.issued}"
            self.pending.append(call_id)
            args = call.get("arguments", {})
            arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            tool_calls.append(
                {"id": call_id, "type": "function", "function": {"name": call["name"], "arguments": arguments}}
            )
        return {"role": "assistant", "tool_calls": tool_calls}

    def result_message(self, value: str, turn: int) -> dict:
        """An ``observation`` turn as the tool message answering the oldest unanswered call."""
        if not self.pending:
            raise _Skip(f"turn {turn} (observation) follows no function_call")
        return {"role": "tool", "tool_call_id": self.pending.popleft(), "content": value}


def _sharegpt_turn(turn: Any, number: int, calls: _ToolCalls) -> dict | None:
    """One ShareGPT turn as an OpenAI message (None for an empty system turn)."""
    if not isinstance(turn, dict):
        raise _Skip(f"turn {number} is not an object")
    source = turn.get("from", turn.get("role"))
    value = turn.get("value", turn.get("content"))
    if not isinstance(source, str):
        raise _Skip(f"turn {number} has no 'from'")
    if not isinstance(value, str):
        raise _Skip(f"turn {number} has no string 'value'")
    role = SHAREGPT_ROLES.get(source.lower())
    if role is None:
        raise _Skip(f"turn {number} has unknown role '{source}'")
    if role == "function_call":
        return calls.call_message(value, number)
    if role == "observation":
        return calls.result_message(value, number)
    if role == "system" and not value.strip():
        return None
    return {"role": role, "content": _nonempty(value, f"turn {number} ('{source}')")}


def sharegpt_to_chat(record: Any, system: str | None = None) -> Chat:
    """``conversations`` of ``{"from", "value"}`` turns → messages.

    Roles: system; human/user → user; gpt/assistant/chatgpt → assistant; function_call →
    assistant ``tool_calls``; observation/tool → ``tool`` result. A top-level ``system`` field
    and LLaMA-Factory's ``tools`` are honoured.
    """
    obj = _object(record)
    turns = obj.get("conversations")
    if turns is None:
        raise _Skip("missing field 'conversations'")
    if not isinstance(turns, list):
        raise _Skip("field 'conversations' is not a list")
    own_system = _text(obj, "system", required=False)
    messages = [{"role": "system", "content": own_system}] if own_system and own_system.strip() else []
    calls = _ToolCalls()
    for number, turn in enumerate(turns, start=1):
        message = _sharegpt_turn(turn, number, calls)
        if message is not None:
            messages.append(message)
    if not messages:
        raise _Skip("empty 'conversations'")
    return _finish(messages, system, _sharegpt_tools(obj.get("tools")))


# --- CSV -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CsvLayout:
    delimiter: str
    width: int
    user: int
    assistant: int
    system: int | None
    names: tuple[str, ...]


def _delimiter(path: Path, option: str | None) -> str:
    if option is None:
        return "\t" if path.suffix.lower() == ".tsv" else ","
    value = {"\\t": "\t", "tab": "\t"}.get(option.lower(), option)
    if len(value) != 1:
        raise ConvertError(f"the CSV delimiter must be one character, not {option!r}")
    return value


def _column(header: list[str], name: str | None, defaults: tuple[str, ...], what: str, flag: str, path: Path) -> int:
    columns = ", ".join(header)
    if name is not None:
        if name not in header:
            raise ConvertError(f"{path} has no column '{name}' (columns: {columns})")
        return header.index(name)
    lowered = [h.strip().lower() for h in header]
    for candidate in defaults:
        if candidate in lowered:
            return lowered.index(candidate)
    raise ConvertError(f"cannot tell which column of {path} holds the {what}; pass {flag} (columns: {columns})")


def _csv_layout(path: Path, options: ConvertOptions) -> _CsvLayout:
    """Read the header row and resolve the user / assistant / system columns."""
    delimiter = _delimiter(path, options.delimiter)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f, delimiter=delimiter), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConvertError(f"{path}: cannot read the CSV header ({exc})") from exc
    if not header:
        raise ConvertError(f"{path}: no CSV header row")
    user = _column(header, options.user_column, USER_COLUMNS, "user message", "--user-column", path)
    assistant = _column(
        header, options.assistant_column, ASSISTANT_COLUMNS, "assistant reply", "--assistant-column", path
    )
    system = None
    if options.system_column is not None:
        system = _column(header, options.system_column, (), "system prompt", "--system-column", path)
    return _CsvLayout(delimiter, len(header), user, assistant, system, tuple(header))


def iter_csv_rows(path: Path, layout: _CsvLayout) -> Iterator[tuple[int, Any]]:
    """Yield (row number, list of fields or ``Invalid``) for each non-blank data row (header is row 1)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=layout.delimiter)
        number = 0
        while True:
            number += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield number, Invalid(f"not valid CSV ({exc})")
                continue
            except UnicodeDecodeError as exc:
                raise ConvertError(f"{path}: not UTF-8 text (row {number})") from exc
            if number > 1 and any(cell.strip() for cell in row):
                yield number, row


def csv_row_to_chat(row: list[str], layout: _CsvLayout, system: str | None = None) -> Chat:
    """The user and assistant columns of one row (and its system column, when given)."""
    if len(row) != layout.width:
        raise _Skip(f"has {len(row)} fields, the header has {layout.width}")
    messages = [
        {"role": "user", "content": _nonempty(row[layout.user], f"'{layout.names[layout.user]}'")},
        {"role": "assistant", "content": _nonempty(row[layout.assistant], f"'{layout.names[layout.assistant]}'")},
    ]
    own_system = row[layout.system] if layout.system is not None else ""
    if own_system.strip():
        messages.insert(0, {"role": "system", "content": own_system})
    return _finish(messages, system)


# --- the conversion --------------------------------------------------------------------------


def _check_paths(src: Path, dest: Path) -> None:
    if not src.exists():
        raise ConvertError(f"{src}: no such file")
    if not src.is_file():
        raise ConvertError(f"{src}: not a file")
    if same_file(src, dest):
        raise ConvertError(f"{dest}: the output would overwrite the input; choose another output path")
    if dest.is_dir():
        raise ConvertError(f"{dest}: is a folder; name the output file")


def resolve_source_format(src: Path, source_format: str | None) -> str:
    """The explicit format (case-insensitive, validated) or the detected one."""
    if source_format is None:
        return detect_source_format(src)
    fmt = source_format.strip().lower()
    if fmt not in SOURCE_FORMATS:
        raise ConvertError(f"unknown format '{source_format}'; choose one of {', '.join(SOURCE_FORMATS)}")
    return fmt


def _records(src: Path, fmt: str, options: ConvertOptions) -> tuple[Iterator[tuple[int, Any]], Callable[[Any], Chat]]:
    """The record stream for a format and the function turning one record into a chat example."""
    if fmt == "csv":
        layout = _csv_layout(src, options)
        return iter_csv_rows(src, layout), lambda row: csv_row_to_chat(row, layout, options.system)
    to_chat = {"alpaca": alpaca_to_chat, "sharegpt": sharegpt_to_chat, "completion": completion_to_chat}[fmt]
    return iter_json_records(src), lambda record: to_chat(record, options.system)


def _encode(chat: Chat) -> bytes:
    try:
        return (json.dumps(chat, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        raise _Skip("contains an invalid Unicode surrogate") from None


def convert_file(
    src: Path, dest: Path, source_format: str | None = None, options: ConvertOptions | None = None
) -> ConvertReport:
    """Convert ``src`` into OpenAI chat JSONL at ``dest``; report what was written and skipped.

    ``source_format`` is one of ``SOURCE_FORMATS`` or None to detect it. ``dest`` is replaced
    atomically, and left untouched when no record converts (``report.written == 0``).
    """
    options = options or ConvertOptions()
    _check_paths(src, dest)
    fmt = resolve_source_format(src, source_format)
    records, to_chat = _records(src, fmt, options)
    report = ConvertReport(fmt, dest)
    with AtomicWriter(dest) as out:
        for line, record in records:
            report.read += 1
            try:
                if isinstance(record, Invalid):
                    raise _Skip(record.reason)
                out.file.write(_encode(to_chat(record)))
                report.written += 1
            except _Skip as skip:
                report.skip(line, str(skip))
        if report.written == 0:
            out.discard()
    return report


def default_output_path(src: Path) -> Path:
    """``<stem>.chat.jsonl`` next to the input."""
    return src.with_name(f"{src.stem}.chat.jsonl")
