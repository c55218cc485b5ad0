"""Request and response bodies of the HTTP API (DESIGN's public contract).

Structure is checked here (unknown fields, wrong JSON types: 422 validation_error); texts and
labels are typed loosely on purpose, so the engine's own checks answer with their specific
types (no_text, too_many_sequences, ...) in the engine's order.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from zeroshot.errors import InvalidInputError

Labels = StrictStr | list[Any] | None


# The request models parse; the OpenAPI document's words and rules for these bodies are
# serve.contract's (built from the live limits and served models), not these fields'.


class HFParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidate_labels: Labels = None
    multi_label: StrictBool | None = None
    hypothesis_template: StrictStr | None = None
    model: StrictStr | None = None  # POST /models/{id} names it in the path instead


class HFRequest(BaseModel):
    """Hugging Face Inference API zero-shot-classification body."""

    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[Any]
    parameters: HFParameters = Field(default_factory=HFParameters)
    options: dict[str, Any] | None = None  # the Inference API's; accepted, ignored


class ClassifyRequest(BaseModel):
    """Native body: several sequences against one label set."""

    model_config = ConfigDict(extra="forbid")

    sequences: StrictStr | list[Any]
    candidate_labels: Labels = None
    multi_label: StrictBool | None = None
    hypothesis_template: StrictStr | None = None
    model: StrictStr | None = None


class LabelScore(BaseModel):
    label: str
    score: float


class SequenceResult(BaseModel):
    sequence: str
    labels: list[str]
    scores: list[float]


class Usage(BaseModel):
    pairs: int = Field(description="NLI pairs scored (sequences x labels).")
    tokens: int = Field(description="Tokens in those pairs, before padding.")


class ClassifyResponse(BaseModel):
    model: str = Field(description="The id of the served model that scored them.")
    results: list[SequenceResult]
    usage: Usage


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


def parse(model: type[BaseModel], payload: object) -> Any:
    """Validate a decoded JSON body; any structural problem is one 422 validation_error."""
    if not isinstance(payload, dict):
        raise InvalidInputError(f"the body must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False)[:5]:
            where = ".".join(str(p) for p in err["loc"]) or "body"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown field '{where}'")
            else:
                problems.append(f"'{where}': {err['msg']}")
        more = exc.error_count() - len(problems)
        suffix = f" (and {more} more)" if more > 0 else ""
        raise InvalidInputError("invalid request: " + "; ".join(problems) + suffix) from None
