"""OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}`` for every failure."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The envelope of every error, in a reply and as the last event of a failed stream."""

    error: ErrorBody


def envelope(status: int, message: str, param: str | None = None, code: str | None = None) -> ErrorResponse:
    body = ErrorBody(message=message, type=_TYPES.get(status, "server_error"), param=param, code=code)
    return ErrorResponse(error=body)


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def envelope(self) -> ErrorResponse:
        return envelope(self.status, self.message, self.param, self.code)


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(envelope(status, message, param, code).model_dump(), status_code=status, headers=headers)


def not_found(kind: str, ident: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, f"No {kind} found with id '{ident}'.", param=param, code=code)


def model_not_found(model: str, detail: str | None = None) -> APIError:
    """The 404 for a model id that names no base, fine-tuned or checkpoint model; ``detail`` replaces
    OpenAI's wording where the caller can say more (fine-tuning jobs list the base models available)."""
    message = detail or f"The model `{model}` does not exist or you do not have access to it."
    return APIError(404, message, param="model", code="model_not_found")


def generation_failed(error: str | None) -> APIError:
    """The 500 for a request the engine could not finish."""
    return APIError(500, f"Generation failed: {redact_paths(error or 'unknown error')}")


_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"`:,;()]+/)+([^\s/'\"`:,;()]*)")


def redact_paths(text: str) -> str:
    """``text`` with each absolute file path shortened to its last part: messages never show where
    the server keeps its files or its code."""
    return _PATH.sub(lambda m: m.group(1) or "…", text)


def install_error_handlers(app: FastAPI) -> None:
    """Answer our errors, HTTP errors, validation errors and crashes in the envelope."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), code=getattr(exc, "code", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        if first.get("type") == "extra_forbidden":
            return error_response(
                400, f"Unsupported parameter: '{param}' is not supported by tuneloop.", param, "unsupported_parameter"
            )
        if first.get("type") == "json_invalid":  # loc holds a character offset, not a parameter
            reason = first.get("ctx", {}).get("error", "not valid JSON")
            return error_response(400, f"We could not parse the JSON body of your request ({reason}).",
                                  code="invalid_json")  # fmt: skip
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid request')}" if param else str(exc)
        return error_response(400, redact_paths(message), param=param, code="invalid_value")

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return error_response(500, f"Internal server error ({type(exc).__name__}); the server's log has the details.")
