"""One error taxonomy for every path: bad input, unusable models, overload, internal faults.

The engine knows nothing of HTTP (as in text-embeddings-inference): `ErrorType` names what
went wrong, and each error may say when a retry could succeed. The Serve app maps a type to a
status in one table (`serve.errors`); the offline job writes `type: message` into the row's
`error` column; the CLI prints the same and exits with 2.
"""

from __future__ import annotations

from enum import Enum


class ErrorType(str, Enum):
    """Machine-readable error kinds (the `type` of the API's `{"error": {...}}`)."""

    # The request itself: the caller can fix it.
    BAD_REQUEST = "bad_request"
    INVALID_JSON = "invalid_json"
    VALIDATION = "validation_error"
    NO_LABELS = "no_labels"
    INVALID_LABELS = "invalid_labels"
    NO_TEXT = "no_text"
    INVALID_TEXT = "invalid_text"
    INVALID_TEMPLATE = "invalid_template"
    HYPOTHESIS_TOO_LONG = "hypothesis_too_long"
    TOO_MANY_LABELS = "too_many_labels"
    TOO_MANY_SEQUENCES = "too_many_sequences"
    TEXT_TOO_LONG = "text_too_long"
    BODY_TOO_LARGE = "body_too_large"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # The service, now: a retry (after `retry_after_s`) may succeed.
    TOO_MANY_REQUESTS = "too_many_requests"
    OVERLOADED = "overloaded"
    DEVICE_OUT_OF_MEMORY = "device_out_of_memory"
    MODEL_UNAVAILABLE = "model_unavailable"
    SHUTTING_DOWN = "shutting_down"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    # Ours.
    INTERNAL = "internal_error"

    @property
    def retry_after_s(self) -> float | None:
        """How long a client should wait before retrying; None: retrying will not help."""
        return _RETRY_AFTER_S.get(self)


# Seconds before a retry may succeed: a batch drains in about a second; a lost replica takes a
# few seconds to be replaced.
_RETRY_AFTER_S = {
    ErrorType.TOO_MANY_REQUESTS: 1.0,
    ErrorType.OVERLOADED: 1.0,
    ErrorType.DEVICE_OUT_OF_MEMORY: 1.0,
    ErrorType.MODEL_UNAVAILABLE: 5.0,
    ErrorType.SHUTTING_DOWN: 1.0,
    ErrorType.DEADLINE_EXCEEDED: 1.0,
}


class ZeroShotError(Exception):
    """Base of every error this project raises on purpose."""

    type: ErrorType = ErrorType.INTERNAL

    def __init__(self, message: str, *, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s if retry_after_s is not None else self.type.retry_after_s

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type.value, "message": self.message}

    def __reduce__(self):
        # Keep the subclass, message and retry delay when the error crosses a Ray process.
        return (_rebuild, (self.__class__, self.message, self.retry_after_s))


def _rebuild(cls: type[ZeroShotError], message: str, retry_after_s: float | None):
    return cls(message, retry_after_s=retry_after_s)


class InvalidInputError(ZeroShotError, ValueError):
    """Input the caller can fix; never a server fault."""

    type = ErrorType.VALIDATION


class BadRequestError(InvalidInputError):
    type = ErrorType.BAD_REQUEST


class InvalidJSONError(InvalidInputError):
    type = ErrorType.INVALID_JSON


class NoLabelsError(InvalidInputError):
    type = ErrorType.NO_LABELS


class InvalidLabelsError(InvalidInputError):
    type = ErrorType.INVALID_LABELS


class EmptyLabelError(InvalidLabelsError):
    """A label with no text: its hypothesis would be the bare template."""


class DuplicateLabelsError(InvalidLabelsError):
    """A label given twice: the copies would be scored twice and compete with each other."""


class NoTextError(InvalidInputError):
    type = ErrorType.NO_TEXT


class InvalidTextError(InvalidInputError, TypeError):
    type = ErrorType.INVALID_TEXT


class InvalidTemplateError(InvalidInputError):
    type = ErrorType.INVALID_TEMPLATE


class HypothesisTooLongError(InvalidInputError):
    type = ErrorType.HYPOTHESIS_TOO_LONG


class TooManyLabelsError(InvalidInputError):
    type = ErrorType.TOO_MANY_LABELS


class TooManySequencesError(InvalidInputError):
    type = ErrorType.TOO_MANY_SEQUENCES


class TextTooLongError(InvalidInputError):
    type = ErrorType.TEXT_TOO_LONG


class BodyTooLargeError(InvalidInputError):
    type = ErrorType.BODY_TOO_LARGE


class UnauthorizedError(ZeroShotError):
    type = ErrorType.UNAUTHORIZED


class NotFoundError(ZeroShotError):
    type = ErrorType.NOT_FOUND


class ModelNotFoundError(ZeroShotError):
    """A request named a model this app does not serve (the message names the served ones)."""

    type = ErrorType.MODEL_NOT_FOUND


class MethodNotAllowedError(ZeroShotError):
    type = ErrorType.METHOD_NOT_ALLOWED


class TooManyRequestsError(ZeroShotError):
    type = ErrorType.TOO_MANY_REQUESTS


class OverloadedError(ZeroShotError):
    """The service is at capacity; retry after `retry_after_s`."""

    type = ErrorType.OVERLOADED


class DeviceOutOfMemoryError(ZeroShotError):
    """The forward pass ran out of device memory on this batch; smaller requests or a retry
    may succeed."""

    type = ErrorType.DEVICE_OUT_OF_MEMORY


class ModelLoadError(ZeroShotError, OSError):
    """The model or tokenizer could not be loaded (not found, hub unreachable, bad files)."""

    type = ErrorType.MODEL_UNAVAILABLE


class ModelUnavailableError(ZeroShotError):
    """No replica can score right now (starting, restarting or gone)."""

    type = ErrorType.MODEL_UNAVAILABLE


class ShuttingDownError(ZeroShotError):
    type = ErrorType.SHUTTING_DOWN


class DeadlineExceededError(ZeroShotError):
    type = ErrorType.DEADLINE_EXCEEDED


class InternalError(ZeroShotError):
    type = ErrorType.INTERNAL


def from_exception(exc: BaseException) -> ZeroShotError:
    """Any failure of the engine as a typed error: ours as they are, a device out of memory as
    a retryable error, anything else as internal (named, without a stack trace)."""
    if isinstance(exc, ZeroShotError):
        return exc
    # torch.OutOfMemoryError (CUDA, MPS, XPU), by name: this module never imports torch.
    if type(exc).__name__ == "OutOfMemoryError":
        return DeviceOutOfMemoryError(
            "the model ran out of device memory on this batch; retry, or send fewer pairs"
        )
    return InternalError(f"scoring failed: {type(exc).__name__}: {exc}")
