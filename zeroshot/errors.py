"""One error taxonomy for bad input and unusable models.

Every path (Python API, HTTP, Ray Data rows) raises or reports these; the HTTP layer maps
`ErrorType.status` to the response code and the offline job writes `ErrorType.value` and the
message into the row's `error` column.
"""

from __future__ import annotations

from enum import Enum


class ErrorType(str, Enum):
    """Machine-readable error kinds, each with the HTTP status it maps to."""

    INVALID_JSON = "invalid_json"
    VALIDATION = "validation_error"
    NO_LABELS = "no_labels"
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
    OVERLOADED = "overloaded"
    MODEL_UNAVAILABLE = "model_unavailable"
    INTERNAL = "internal_error"

    @property
    def status(self) -> int:
        return _STATUS[self]


_STATUS = {
    ErrorType.INVALID_JSON: 400,
    ErrorType.VALIDATION: 422,
    ErrorType.NO_LABELS: 422,
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
    ErrorType.OVERLOADED: 503,
    ErrorType.MODEL_UNAVAILABLE: 503,
    ErrorType.INTERNAL: 500,
}


class ZeroShotError(Exception):
    """Base of every error this project raises on purpose."""

    type: ErrorType = ErrorType.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type.value, "message": self.message}

    def __reduce__(self):
        # Keep the subclass and message when the error crosses a Ray process boundary.
        return (self.__class__, (self.message,))


class InvalidInputError(ZeroShotError, ValueError):
    """Input the caller can fix; never a server fault."""

    type = ErrorType.VALIDATION


class NoLabelsError(InvalidInputError):
    type = ErrorType.NO_LABELS


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


class ModelLoadError(ZeroShotError, OSError):
    """The model or tokenizer could not be loaded (not found, hub unreachable, bad files)."""

    type = ErrorType.MODEL_UNAVAILABLE
