"""``/v1/files``: upload, list, retrieve, delete, content, and tuneloop's validation report of a file."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from tuneloop.api.errors import APIError, model_not_found, not_found
from tuneloop.api.protocol import Deleted, FileList, FileObject
from tuneloop.api.state import AppState, get_state
from tuneloop.errors import ModelNotFoundError
from tuneloop.jobs.validation import file_validator
from tuneloop.models.catalog import BUILTIN_NAME
from tuneloop.store.blobs import TooLargeError
from tuneloop.store.files import PURPOSES, FileRecord

router = APIRouter()
State = Annotated[AppState, Depends(get_state)]


def _name(filename: str | None, default: str) -> str:
    """A file's name without any folders in it: neither stored nor sent back is ever a path."""
    return (filename or "").replace("\\", "/").rsplit("/", 1)[-1] or default


def _file(record: FileRecord) -> FileObject:
    return FileObject.model_validate(record.to_openai())


@router.post("/files")
def upload_file(state: State, file: UploadFile = File(...), purpose: str = Form(...)) -> FileObject:
    if purpose not in PURPOSES or purpose == "fine-tune-results":
        raise APIError(400, f"Invalid purpose '{purpose}'.", param="purpose", code="invalid_value")
    filename = _name(file.filename, "upload")
    if purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
        raise APIError(400, "Fine-tuning files must be .jsonl files.", param="file", code="invalid_file_format")
    try:
        record = state.files.create(filename, purpose, file.file, state.settings.max_upload_bytes)
    except TooLargeError as exc:
        raise APIError(413, str(exc), param="file", code="file_too_large") from exc
    return _file(record)


@router.get("/files")
def list_files(
    state: State,
    purpose: str | None = None,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
) -> FileList:
    records, has_more = state.files.list(purpose, order, after, limit)
    return FileList.of([_file(r) for r in records], has_more)


@router.get("/files/{file_id}")
def retrieve_file(state: State, file_id: str) -> FileObject:
    record = state.files.get(file_id)
    if record is None:
        raise not_found("file", file_id, param="file_id")
    return _file(record)


@router.delete("/files/{file_id}")
def delete_file(state: State, file_id: str) -> Deleted:
    if users := state.jobs.active_using(file_id):  # the job would fail later without its data
        job, status = users[0]
        raise APIError(409, f"File '{file_id}' is in use by fine-tuning job {job} ({status}); delete it once the "
                       "job has ended, or cancel the job first.", param="file_id", code="file_in_use")  # fmt: skip
    if not state.files.delete(file_id):
        raise not_found("file", file_id, param="file_id")
    return Deleted(id=file_id, object="file")


@router.get("/files/{file_id}/content")
def file_content(state: State, file_id: str) -> FileResponse:
    record = state.files.get(file_id)
    if record is None:
        raise not_found("file", file_id, param="file_id")
    return FileResponse(state.files.path(record), media_type="application/octet-stream",
                        filename=_name(record.filename, "file"))  # fmt: skip


@router.get("/files/{file_id}/validation")
def validate_stored_file(state: State, file_id: str, model: str = BUILTIN_NAME) -> dict:
    """tuneloop's extension: the data validator's report of a stored file, as ``tuneloop data validate
    --json`` prints it (errors and warnings by line, token statistics counted with ``model``'s tokenizer
    and chat template, the auto epochs and the estimated training time). Sync: runs in the thread pool."""
    record = state.files.get(file_id)
    if record is None:
        raise not_found("file", file_id, param="file_id")
    try:
        validate = file_validator(state.catalog, model)
    except ModelNotFoundError as exc:  # the catalog's message lists the base models one can fine-tune
        raise model_not_found(model, str(exc)) from exc
    report = validate(state.files.path(record))
    return {"object": "file.validation", "file_id": file_id, "model": model, "ok": report.ok,
            **report.to_dict(), "path": _name(record.filename, "file")}  # fmt: skip
