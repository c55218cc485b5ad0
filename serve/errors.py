"""The HTTP error shape: `{"error": {"type", "message"}}` with the status of the engine's
`ErrorType`, for engine errors, HTTP-level errors and overload alike."""

from __future__ import annotations

import math

from starlette.responses import JSONResponse

from zeroshot.errors import ErrorType, ZeroShotError

# Statuses Starlette raises itself (routing, methods), mapped onto the taxonomy's names.
_HTTP_TYPES = {
    400: ErrorType.INVALID_JSON.value,
    401: ErrorType.UNAUTHORIZED.value,
    404: ErrorType.NOT_FOUND.value,
    405: "method_not_allowed",
    413: ErrorType.BODY_TOO_LARGE.value,
    422: ErrorType.VALIDATION.value,
    429: ErrorType.OVERLOADED.value,
    503: ErrorType.OVERLOADED.value,
}


class HTTPError(ZeroShotError):
    """An error raised by the HTTP layer itself, with its own status and type."""

    def __init__(
        self,
        message: str,
        error_type: ErrorType | str = ErrorType.VALIDATION,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.error_type = error_type
        self.status = status if status is not None else ErrorType(error_type).status
        self.headers = headers or {}

    def to_dict(self) -> dict[str, str]:
        t = self.error_type
        return {"type": t.value if isinstance(t, ErrorType) else t, "message": self.message}

    def __reduce__(self):
        return (self.__class__, (self.message, self.error_type, self.status, self.headers))


def error_body(error_type: str, message: str) -> dict:
    return {"error": {"type": error_type, "message": message}}


def error_response(exc: ZeroShotError) -> JSONResponse:
    if isinstance(exc, HTTPError):
        return JSONResponse(
            {"error": exc.to_dict()}, status_code=exc.status, headers=exc.headers or None
        )
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.type.status)


def http_error_response(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(_HTTP_TYPES.get(status, "http_error"), detail),
        status_code=status,
        headers=headers,
    )


def overloaded_response(status: int, retry_after_s: float | None, message: str) -> JSONResponse:
    """429/503 with Retry-After (whole seconds, rounded up, as Serve's own proxy does)."""
    headers = None
    if retry_after_s is not None:
        headers = {"Retry-After": str(max(0, math.ceil(retry_after_s)))}
    return JSONResponse(
        error_body(ErrorType.OVERLOADED.value, message), status_code=status, headers=headers
    )
