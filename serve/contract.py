"""The OpenAPI document, exact: built from the live configuration, so that a request the
document allows is never refused for its shape and one it forbids always is.

The bodies are parsed by hand (serve.schemas, then zeroshot.requests), so FastAPI knows nothing
of their rules; here every one of them is stated: non-empty texts up to `max_chars`, 1 to
`max_sequences` of them, 1 to `max_labels` labels (a list of distinct labels with text, or one
comma-separated string), the template's one place for the label, the served model ids as an
enum. Each route documents every status it can answer with the error schema, and with an API
key the bearer scheme on the routes that need it (`/healthz` and the docs stay open).
"""

from __future__ import annotations

from typing import Any

from serve.config import AppConfig
from serve.schemas import ErrorResponse
from zeroshot.requests import LABEL_PATTERN, TEMPLATE_PATTERN, labels_string_pattern

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
BEARER = "bearer"

# What each error status means, per route kind (serve.errors.STATUS is the mapping).
_ERROR_TEXT = {
    400: "Malformed JSON or an empty body.",
    401: "API key required and missing or wrong (send `Authorization: Bearer <key>`).",
    404: "No such served model (the message names the served ones).",
    413: "Body, sequences or a text larger than the limits.",
    422: "Invalid input (fields, types, labels, template, text).",
    503: "Overloaded, past the deadline, stopping or the model down: retry after `Retry-After`.",
}
_CLASSIFY_ERRORS = (400, 404, 413, 422, 503)


def _text(cfg: AppConfig) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": cfg.limits.max_chars}


def _texts(cfg: AppConfig, what: str) -> dict[str, Any]:
    return {
        "description": f"{what}: one text, or a list of 1 to {cfg.limits.max_sequences}; each "
        f"1 to {cfg.limits.max_chars} characters (a longer text is refused, not truncated; "
        "token truncation to the model's limit applies below that).",
        "anyOf": [
            _text(cfg),
            {"type": "array", "items": _text(cfg), "minItems": 1,
             "maxItems": cfg.limits.max_sequences},
        ],
    }  # fmt: skip


def _labels(cfg: AppConfig) -> dict[str, Any]:
    n = cfg.limits.max_labels
    return {
        "description": f"1 to {n} labels, each once: a list of labels with some text (scored as "
        "given), or one comma-separated string, split on commas, each piece stripped and the "
        "empty ones dropped (the transformers pipeline's rule).",
        "anyOf": [
            {"type": "array", "minItems": 1, "maxItems": n, "uniqueItems": True,
             "items": {"type": "string", "pattern": LABEL_PATTERN}},
            {"type": "string", "pattern": labels_string_pattern(n)},
        ],
    }  # fmt: skip


def _options(cfg: AppConfig, *, with_model: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "candidate_labels": _labels(cfg),
        "multi_label": {
            "description": "Score each label independently (default false: scores sum to 1).",
            "anyOf": [{"type": "boolean"}, {"type": "null"}],
        },
        "hypothesis_template": {
            "description": "Hypothesis with the label's place (default \"This example is "
            '{}."): `{}` once, or `{0}`; other braces doubled.',
            "anyOf": [{"type": "string", "pattern": TEMPLATE_PATTERN}, {"type": "null"}],
        },
    }
    if with_model:
        props["model"] = {
            "description": "The served model that scores it (GET /v1/info lists them); "
            f"null or absent: the first, `{cfg.default_model}`.",
            "anyOf": [{"type": "string", "enum": _model_ids(cfg)}, {"type": "null"}],
        }
    return props


def _model_ids(cfg: AppConfig) -> list[str]:
    return [m.name for m in cfg.served]


def request_schemas(cfg: AppConfig) -> dict[str, dict[str, Any]]:
    """The request bodies' JSON Schemas under `cfg`'s limits and served models."""

    def hf(name: str, with_model: bool, where: str) -> dict[str, dict[str, Any]]:
        return {
            f"{name}Parameters": {
                "title": f"{name}Parameters",
                "description": f"The Hugging Face Inference API's parameters{where}.",
                "type": "object",
                "additionalProperties": False,
                "required": ["candidate_labels"],
                "properties": _options(cfg, with_model=with_model),
            },
            f"{name}Request": {
                "title": f"{name}Request",
                "description": "The Hugging Face Inference API's zero-shot-classification "
                f"body{where}.",
                "type": "object",
                "additionalProperties": False,
                "required": ["inputs", "parameters"],
                "properties": {
                    "inputs": _texts(cfg, "The text to classify (the Inference API's string), "
                                          "or a list of texts"),
                    "parameters": {"$ref": f"#/components/schemas/{name}Parameters"},
                    "options": {
                        "description": "Inference API options (wait_for_model, use_cache): "
                        "accepted, ignored.",
                        "anyOf": [{"type": "object"}, {"type": "null"}],
                    },
                },
            },
        }  # fmt: skip

    return {
        **hf("HF", True, ""),
        # /models/{model_id}: the path names the model, so the parameters do not.
        **hf("HFModel", False, " (the model named by the path)"),
        "ClassifyRequest": {
            "title": "ClassifyRequest",
            "description": "Native body: several sequences against one label set.",
            "type": "object",
            "additionalProperties": False,
            "required": ["sequences", "candidate_labels"],
            "properties": {"sequences": _texts(cfg, "Texts to classify"),
                           **_options(cfg, with_model=True)},
        },
    }  # fmt: skip


def _errors(codes, secured: bool) -> dict[str, Any]:
    codes = sorted({*codes, *((401,) if secured else ())})
    json_error = {"application/json": {"schema": ERROR_REF}}
    return {str(c): {"description": _ERROR_TEXT[c], "content": json_error} for c in codes}


_TEXT = "The new phone's camera is the best I have used."
_EXAMPLES = {
    "HFRequest": {"inputs": _TEXT,
                  "parameters": {"candidate_labels": ["technology", "sports", "politics"]}},
    "HFModelRequest": {"inputs": _TEXT, "parameters": {"candidate_labels": "technology, sports"}},
    "ClassifyRequest": {"sequences": [_TEXT, "The match went to extra time."],
                        "candidate_labels": ["technology", "sports"], "multi_label": True},
}  # fmt: skip


def _body(name: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {
        "required": True,
        "content": {"application/json": {"schema": schema, "example": _EXAMPLES[name]}},
    }


def apply(spec: dict[str, Any], cfg: AppConfig) -> dict[str, Any]:
    """FastAPI's document for `create_api`'s routes with every request rule and answer stated."""
    secured = cfg.resolved_api_key() is not None
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    error = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error.pop("$defs", {}), ErrorResponse=error, **request_schemas(cfg))
    paths = spec["paths"]
    for path, body in (("/", "HFRequest"), ("/models/{model_id}", "HFModelRequest"),
                       ("/v1/classify", "ClassifyRequest")):  # fmt: skip
        op = paths[path]["post"]
        op["requestBody"] = _body(body)
        op["parameters"] = []
        op["responses"] = {"200": op["responses"]["200"], **_errors(_CLASSIFY_ERRORS, secured)}
    paths["/models/{model_id}"]["post"]["parameters"] = [
        {
            "name": "model_id",
            "in": "path",
            "required": True,
            "description": "A served model's id (hub ids keep their slash).",
            "schema": {"type": "string", "enum": _model_ids(cfg)},
        }
    ]
    info = paths["/v1/info"]["get"]
    info["responses"] = {"200": info["responses"]["200"], **_errors((503,), secured)}
    health = paths["/healthz"]["get"]
    health["responses"] = {
        "200": {"description": "Ready.", "content": {"application/json": {"schema": {
            "type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}}}},
        **_errors((503,), False),
    }  # fmt: skip
    if secured:
        spec["components"]["securitySchemes"] = {
            BEARER: {"type": "http", "scheme": "bearer",
                     "description": "The app's API key (`api_key` / ZEROSHOT_API_KEY)."}
        }  # fmt: skip
        spec["security"] = [{BEARER: []}]
        health["security"] = []  # open: load balancers and probes carry no key
        health["description"] = "Open: needs no API key."
    return spec
