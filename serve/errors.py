"""The one place where an error becomes an HTTP answer: `{"error": {"type", "message"}}` with
the status of its `ErrorType` (the table below) and `Retry-After` when a retry may succeed.

`to_error` turns anything a route can meet (engine errors, Ray and Serve failures, Starlette's
routing errors) into a `ZeroShotError`; `error_response` answers it.
"""

from __future__ import annotations

import math

from starlette.responses import JSONResponse

from zeroshot.errors import (
    BadRequestError,
    ErrorType,
    InternalError,
    InvalidInputError,
    MethodNotAllowedError,
    ModelUnavailableError,
    NotFoundError,
    OverloadedError,
    TooManyRequestsError,
    UnauthorizedError,
    ZeroShotError,
    from_exception,
)

STATUS: dict[ErrorType, int] = {
    ErrorType.BAD_REQUEST: 400,
    ErrorType.INVALID_JSON: 400,
    ErrorType.VALIDATION: 422,
    ErrorType.NO_LABELS: 422,
    ErrorType.INVALID_LABELS: 422,
    ErrorType.NO_TEXT: 422,
    ErrorType.INVALID_TEXT: 422,
    ErrorType.INVALID_TEMPLATE: 422,
    ErrorType.HYPOTHESIS_TOO_LONG: 422,
    ErrorType.TOO_MANY_LABELS: 413,
    ErrorType.TOO_MANY_SEQUENCES: 413,
    ErrorType.TEXT_TOO_LONG: 413,
    ErrorType.BODY_TOO_LARGE: 413,
    ErrorType.UNAUTHORIZED: 401,
    ErrorType.NOT_FOUND: 404,
    ErrorType.MODEL_NOT_FOUND: 404,
    ErrorType.METHOD_NOT_ALLOWED: 405,
    ErrorType.TOO_MANY_REQUESTS: 429,
    ErrorType.OVERLOADED: 503,
    ErrorType.DEVICE_OUT_OF_MEMORY: 503,
    ErrorType.MODEL_UNAVAILABLE: 503,
    ErrorType.SHUTTING_DOWN: 503,
    ErrorType.DEADLINE_EXCEEDED: 503,
    ErrorType.INTERNAL: 500,
}

# Starlette's own HTTP errors (routing, methods) by status; other 4xx are a bad request.
_STARLETTE = {
    401: UnauthorizedError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    429: TooManyRequestsError,
    503: OverloadedError,
}


def http_status(error_type: ErrorType) -> int:
    return STATUS[error_type]


def to_error(exc: BaseException) -> ZeroShotError:
    """Anything a route can meet as a typed error (never raises)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    if isinstance(exc, ZeroShotError):
        return exc
    if isinstance(exc, HTTPException):
        cls = _STARLETTE.get(exc.status_code)
        if cls is None:
            cls = BadRequestError if exc.status_code < 500 else InternalError
        return cls(str(exc.detail))
    if isinstance(exc, RequestValidationError):
        return InvalidInputError(f"invalid request: {exc.errors()[:3]}")
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None:
        return to_error(exc.cause)
    if isinstance(exc, BackPressureError):
        cls = TooManyRequestsError if exc.status_code == 429 else OverloadedError
        return cls(
            "the service is at capacity; retry after the Retry-After delay",
            retry_after_s=exc.retry_after_s,
        )
    if isinstance(
        exc, (DeploymentUnavailableError, RayActorError, ActorDiedError, ActorUnavailableError)
    ):
        return ModelUnavailableError("the model is not available now; retry shortly")
    return from_exception(exc)


def error_body(exc: ZeroShotError) -> dict:
    return {"error": exc.to_dict()}


def error_response(exc: BaseException) -> JSONResponse:
    """The JSON answer for any error: status from `STATUS`, Retry-After in whole seconds
    (rounded up, as Serve's own proxy does) when the error says a retry may succeed."""
    error = to_error(exc)
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(0, math.ceil(error.retry_after_s)))
    if error.type is ErrorType.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    # Starlette's own HTTP headers, e.g. a 405's `Allow` (RFC 9110 requires it).
    headers.update(getattr(exc, "headers", None) or {})
    return JSONResponse(error_body(error), status_code=STATUS[error.type], headers=headers or None)
