"""The HTTP ingress: FastAPI through `@serve.ingress`, CPU only.

It validates requests, runs `encode` and `assemble` (the engine's `Frontend`: tokenizer and
config, never the weights) and calls the classifier deployment through a `DeploymentHandle`
with plain data. Bodies are read and decoded here, not by FastAPI, so malformed JSON, huge or
empty bodies and unknown fields get the documented 4xx in the `{"error": ...}` shape.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from serve import contract
from serve.coalesce import Coalescer
from serve.config import INGRESS_NAME, AppConfig, IngressState
from serve.errors import error_response, to_error
from serve.hedge import Hedger
from serve.metrics import Metrics, ingress_metrics, metrics_info
from serve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    HFRequest,
    LabelScore,
    parse,
)
from serve.ui import add_ui_routes
from zeroshot.config import DEFAULT_TEMPLATE
from zeroshot.errors import (
    BodyTooLargeError,
    DeadlineExceededError,
    ErrorType,
    InvalidInputError,
    InvalidJSONError,
    ModelNotFoundError,
    ModelUnavailableError,
    OverloadedError,
    ShuttingDownError,
    UnauthorizedError,
)
from zeroshot.pairs import Pairs, split

log = logging.getLogger("ray.serve")

# Tokenizing this much text takes a millisecond or more: off the event loop then, so it does
# not stall other requests; less is cheaper inline than a thread hop.
INLINE_ENCODE_CHARS = 16_384
# A classifier replica died or became unreachable under a call: worth one retry.
RETRYABLE = (RayActorError, ActorUnavailableError)
# How long /healthz waits for a classifier replica to answer before saying 503.
READY_TIMEOUT_S = 2.0

# The Hugging Face Inference API's per-model route: POST /models/{id}.
MODELS_PREFIX = "/models/"

OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})

# (model id, pairs, counts) -> (logits, {request index: error}); the deployment passes its
# handle, unit tests a local function.
ScoreFn = Callable[[str, Any, list[int]], Awaitable[tuple[Any, dict]]]
InfoFn = Callable[[], Awaitable[dict]]


def _request_id() -> str:
    try:
        return serve.context._get_serve_request_context().request_id or "-"
    except Exception:  # noqa: BLE001 - outside a replica (unit tests)
        return "-"


async def read_json(request: Request, limit: int) -> object:
    """The decoded body, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"the body has {declared} bytes; the limit is {limit}")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BodyTooLargeError(f"the body exceeds the limit of {limit} bytes")
    except ClientDisconnect:
        # Nobody will read the answer; no stack trace for it either.
        raise InvalidJSONError("the client went away while sending") from None
    if not body.strip():
        raise InvalidJSONError("the body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidJSONError(f"the body is not valid JSON: {exc}") from None


class ApiKeyMiddleware:
    """Bearer-key check on every route except health and docs (pure ASGI: no body buffering)."""

    def __init__(self, app, key: str):
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or _route_path(scope) in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                break
        if given and hmac.compare_digest(given, self.key):
            return await self.app(scope, receive, send)
        response = error_response(
            UnauthorizedError("missing or wrong API key: send 'Authorization: Bearer <key>'")
        )
        await response(scope, receive, send)


class HotRoutes:
    """POST / and POST /v1/classify answered as plain ASGI, inside the API-key check.

    The classify routes are the service's whole load; FastAPI's routing, dependency solving
    and exception middlewares cost about as much per request as our own work and add nothing
    to them: their handlers read and answer the body themselves, errors included."""

    def __init__(
        self,
        app,
        routes: dict[str, Callable[[Request], Awaitable[Any]]],
        prefixes: dict[str, Callable[[Request], Awaitable[Any]]] | None = None,
    ):
        self.app = app
        self.routes = routes
        self.prefixes = prefixes or {}

    def _handler(self, path: str):
        handler = self.routes.get(path)
        if handler is None:
            for prefix, candidate in self.prefixes.items():
                if path.startswith(prefix) and len(path) > len(prefix):
                    return candidate
        return handler

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self._handler(_route_path(scope))
            if handler is not None:
                response = await handler(Request(scope, receive))
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _route_path(scope) -> str:
    # Under a Serve route prefix the prefix arrives as root_path; auth is about the app's route.
    path, root = scope.get("path", "/"), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class Service:
    """The ingress's work, free of Serve: validate -> encode -> score (remote) -> assemble.

    Each served model has its own tokenizer (`Frontend`) and its own coalescer
    (`serve.coalesce`): concurrent requests for one model leave in one classifier call,
    encoded with one tokenizer call and assembled together; a call never carries two models,
    and a request that breaks encoding or scoring fails alone."""

    def __init__(
        self,
        config: AppConfig,
        frontends: Mapping[str, Any] | Any,
        score: ScoreFn,
        info: InfoFn,
        metrics=None,
    ):
        self.config = config
        if not isinstance(frontends, Mapping):  # one model: its Frontend alone
            frontends = {config.default_model: frontends}
        self.frontends: dict[str, Any] = dict(frontends)
        self.default_model = config.default_model
        self.score = score
        self.remote_info = info
        self.metrics: Metrics = metrics or Metrics([])
        self.calls: dict[str, Coalescer] = {
            model_id: Coalescer(
                functools.partial(self._flush, model_id),
                max_in_flight=config.ingress.max_calls_in_flight,
                # About one classifier batch per call; a bigger request travels alone. A second
                # call leaves with half a batch waiting: the classifier is busy with the first.
                max_size=config.batching.max_batch_size,
                spill=max(1, config.batching.max_batch_size // 2),
                size=lambda item: len(item[0].sequences) * len(item[0].labels),
                expired=lambda: DeadlineExceededError(
                    f"the request took longer than its {config.request_timeout_s:g} s "
                    "deadline; retry later"
                ),
            )
            for model_id in self.frontends
        }
        self.hedgers = {m: Hedger(config.ingress.hedge_after_s) for m in self.frontends}
        self._ready_until = 0.0
        self.draining = False
        self.in_flight = 0  # requests accepted and not answered yet

    def model_id(self, name: str | None) -> str:
        """The served model a request names (None: the first), or `ModelNotFoundError`."""
        if name is None:
            return self.default_model
        if name not in self.frontends:
            served = ", ".join(self.frontends)
            raise ModelNotFoundError(f"no model {name!r} is served here; the served ones: {served}")
        return name

    async def classify(
        self, sequences, labels, template, multi_label, model: str | None = None
    ) -> tuple[list, dict]:
        """Results and usage of one request for the served model `model` (None: the first)."""
        if self.draining:
            raise ShuttingDownError("this instance is stopping; retry (another one will answer)")
        model_id = self.model_id(model)
        calls = self.calls[model_id]
        timeout = self.config.request_timeout_s
        wait = calls.expected_wait_s()
        if wait > timeout:
            # Shed at the door: queued, it would time out anyway, after using a slot.
            raise OverloadedError(
                f"overloaded: the work queued ahead would take about {wait:.0f} s, more than "
                f"the {timeout:g} s deadline; retry later",
                retry_after_s=min(wait - timeout + 1, 30),
            )
        self.in_flight += 1
        try:
            request = self.frontends[model_id].request(
                sequences,
                labels,
                DEFAULT_TEMPLATE if template is None else template,
                bool(multi_label),
            )
            return await calls.submit((request, _request_id()), time.monotonic() + timeout)
        finally:
            self.in_flight -= 1

    async def _flush(self, model_id: str, items: list) -> list:
        """One classifier call of `model_id` for `items` (request, request id): (results,
        usage) or the error, per request."""
        frontend, metrics = self.frontends[model_id], self.metrics.for_model(model_id)
        requests = [request for request, _ in items]
        t0 = time.perf_counter()
        chars = sum(len(text) for request in requests for text in request.sequences)
        if chars > INLINE_ENCODE_CHARS:
            encoded = await asyncio.to_thread(frontend.encode_many, requests)
        else:
            encoded = frontend.encode_many(requests)
        out: list = list(encoded)  # encoding errors stay in place
        ok = [i for i, e in enumerate(encoded) if not isinstance(e, BaseException)]
        t1 = time.perf_counter()
        if ok:
            counts = [len(encoded[i].pairs) for i in ok]
            pairs = Pairs.concat([encoded[i].pairs for i in ok])

            async def attempt():
                try:
                    return await self.score(model_id, pairs, counts)
                except RETRYABLE as exc:
                    # Scoring is idempotent: a call whose classifier replica died is sent once
                    # more; Serve routes it to a live replica when there is one.
                    log.warning("classifier call failed (%r); retrying once", exc)
                    return await self.score(model_id, pairs, counts)

            hedger = self.hedgers[model_id]
            hedged = hedger.hedged
            deadline = time.monotonic() + self.config.request_timeout_s
            logits, errors = await hedger.call(attempt, deadline)
            if hedger.hedged > hedged:
                metrics.inc("zeroshot_hedged_calls")
            t2 = time.perf_counter()
            for j, (i, rows) in enumerate(zip(ok, split(logits, counts))):
                if j in errors:
                    out[i] = errors[j]
                    continue
                enc = encoded[i]
                usage = {"pairs": len(enc.pairs), "tokens": enc.num_tokens}
                out[i] = (frontend.assemble(enc.request, rows), usage)
            t3 = time.perf_counter()
            metrics.observe("zeroshot_assemble_seconds", t3 - t2)
        metrics.observe("zeroshot_encode_seconds", t1 - t0)
        metrics.observe("zeroshot_call_requests", len(requests))
        metrics.inc("zeroshot_requests", len(requests))
        # The service's access log, one line per classifier call naming each request it
        # carried (Serve's own per-request line is off: a log record per request costs ~8% of
        # the ingress's CPU at thousands of requests/s).
        log.info(
            "classified model=%s requests=%d pairs=%d encode_ms=%.1f call_ms=%.1f request_ids=%s",
            model_id,
            len(requests),
            sum(len(encoded[i].pairs) for i in ok),
            1e3 * (t1 - t0),
            1e3 * (time.perf_counter() - t1),
            ",".join(rid for _, rid in items),
        )
        return out

    async def ready(self) -> None:
        """Return when a request would be scored now (a classifier replica answers), else raise
        `ModelUnavailableError`. A success is trusted for a second, so probes cost little."""
        if self.draining:
            raise ShuttingDownError("not ready: this instance is stopping")
        if time.monotonic() < self._ready_until:
            return
        try:
            await asyncio.wait_for(self.remote_info(), READY_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            reason = (
                "no classifier replica answered in time"
                if isinstance(exc, asyncio.TimeoutError)
                else f"the classifier is unavailable ({type(exc).__name__})"
            )
            raise ModelUnavailableError(f"not ready: {reason}", retry_after_s=1) from None
        self._ready_until = time.monotonic() + 1.0

    async def info(self) -> dict:
        # Asked each time: device and dtype are decided on the classifier replica (dtype=auto,
        # GPU ids) and its batching can be retuned on a running app.
        remote = await self.remote_info()
        cfg = self.config
        models = [self._model_info(m, remote) for m in cfg.served]
        first = models[0]
        return {
            # The first (default) model's, as before several could be served.
            "model": first["model"],
            "revision": first["revision"],
            "device": remote.get("device"),
            "dtype": remote.get("dtype"),
            "labels": first["labels"],
            "max_length": first["max_length"],
            "models": models,
            "limits": {**cfg.limits.model_dump(), "max_body_bytes": cfg.max_body_bytes},
            "batching": remote.get("batching"),
            "max_models_per_replica": cfg.models_per_replica(),
            "auth": cfg.resolved_api_key() is not None,
            "metrics": await asyncio.to_thread(metrics_info),  # ray.nodes() asks the GCS
        }

    def _model_info(self, served, remote: dict) -> dict:
        frontend = self.frontends[served.name]
        nli = frontend.nli
        return {
            "id": served.name,
            "model": served.model,
            "revision": served.revision,
            "family": getattr(frontend.config, "model_type", None),
            "labels": {
                "id2label": {str(k): v for k, v in sorted(nli.id2label.items())},
                "entailment_id": nli.entailment_id,
                "contradiction_id": nli.contradiction_id,
            },
            "max_length": frontend.max_length,
            "dtype": remote.get("dtype"),
        }

    def failed(self, exc: BaseException, model: str | None = None) -> JSONResponse:
        """Any failure of a classification as its JSON error response (never a stack trace);
        `model`: the served model the request named, when it named one that is served."""
        error = to_error(exc)
        response = error_response(error)
        metrics = self.metrics.for_model(model) if model in self.frontends else self.metrics
        metrics.inc(
            "zeroshot_request_errors",
            tags={"type": error.type.value, "status": str(response.status_code)},
        )
        if error.type is ErrorType.INTERNAL:
            log.error("unexpected failure request_id=%s", _request_id(), exc_info=exc)
        else:
            log.log(
                logging.INFO if response.status_code < 500 else logging.WARNING,
                "refused request_id=%s status=%d type=%s: %s",
                _request_id(),
                response.status_code,
                error.type.value,
                error.message[:200],
            )
        return response


def create_api(service: Service) -> FastAPI:
    """The FastAPI app: routes exactly as in DESIGN's public contract."""
    cfg = service.config
    app = FastAPI(
        title="Zero-shot classification",
        version="1",
        description="Zero-shot text classification with "
        + ", ".join(f"`{m.name}`" for m in cfg.served)
        + " (NLI), on Ray Serve.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )

    async def hf_inference(request: Request, path_model: str | None = None):
        model = path_model
        try:
            body = parse(HFRequest, await read_json(request, cfg.max_body_bytes))
            params = body.parameters
            if path_model is not None and params.model is not None:
                # One place names the model (the document has no parameters.model here).
                raise InvalidInputError(
                    f"the path names the model ({path_model!r}): leave parameters.model out"
                )
            model = path_model or params.model
            results, _ = await service.classify(
                body.inputs,
                params.candidate_labels,
                params.hypothesis_template,
                params.multi_label,
                model,
            )
        except Exception as exc:  # noqa: BLE001 - every failure gets the error shape
            return service.failed(exc, model)
        answer = [
            [{"label": label, "score": score} for label, score in zip(r["labels"], r["scores"])]
            for r in results
        ]
        return JSONResponse(answer[0] if isinstance(body.inputs, str) else answer)

    async def classify(request: Request):
        model = None
        try:
            body = parse(ClassifyRequest, await read_json(request, cfg.max_body_bytes))
            model = body.model
            results, usage = await service.classify(
                body.sequences,
                body.candidate_labels,
                body.hypothesis_template,
                body.multi_label,
                model,
            )
        except Exception as exc:  # noqa: BLE001 - every failure gets the error shape
            return service.failed(exc, model)
        answer = {"model": service.model_id(model), "results": results, "usage": usage}
        return JSONResponse(answer)

    async def hf_model_inference(request: Request):
        # /models/{id}: the Hugging Face Inference API's URL shape, so a client pointed at
        # http://host/models/ID works; ids may hold slashes (hub ids do).
        return await hf_inference(request, _route_path(request.scope)[len(MODELS_PREFIX) :])

    # Registered for /docs and the OpenAPI document (bodies and errors: serve.contract);
    # requests reach them through `HotRoutes`.
    app.post(
        "/",
        response_model=list[LabelScore] | list[list[LabelScore]],
        summary="Classify (Hugging Face Inference API shape)",
    )(hf_inference)
    app.post(
        MODELS_PREFIX + "{model_id:path}",
        response_model=list[LabelScore] | list[list[LabelScore]],
        summary="Classify with the served model `model_id` (Hugging Face Inference API shape)",
    )(hf_model_inference)
    app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        summary="Classify several sequences against one label set",
    )(classify)

    @app.get("/v1/info", summary="Model, device, dtype, label mapping and limits")
    async def info():
        try:
            return JSONResponse(await service.info())
        except Exception as exc:  # noqa: BLE001
            return service.failed(exc)

    @app.get(
        "/healthz",
        summary="Readiness: 200 when a request would be scored now, else 503",
    )
    async def healthz():
        try:
            await service.ready()
        except Exception as exc:  # noqa: BLE001
            return service.failed(exc)
        return {"status": "ok"}

    @app.exception_handler(StarletteHTTPException)
    @app.exception_handler(RequestValidationError)
    async def routing_error(_: Request, exc: Exception):
        return error_response(exc)

    original_openapi = app.openapi

    def openapi() -> dict:
        # Bodies, errors and security as the configuration makes them (serve.contract).
        if app.openapi_schema is None:
            app.openapi_schema = contract.apply(original_openapi(), cfg)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    app.add_middleware(
        HotRoutes,
        routes={"/": hf_inference, "/v1/classify": classify},
        prefixes={MODELS_PREFIX: hf_model_inference},
    )
    key = cfg.resolved_api_key()
    if key:
        app.add_middleware(ApiKeyMiddleware, key=key)
    add_ui_routes(app)  # playground at GET / (browsers), offline /docs; last: outermost
    return app


# Every Serve option comes from `AppConfig.deployment_options`.
@serve.deployment(name=INGRESS_NAME)
@serve.ingress()
class ZeroShotIngress:
    """HTTP ingress replica: holds a `Frontend` per served model and a handle to the
    classifier deployment."""

    def __init__(self, classifier, config: dict):
        from zeroshot.frontend import Frontend

        self.config = AppConfig.model_validate(config)
        self.classifier = classifier
        # Every served model's tokenizer and config (never its weights), loaded up front: a
        # request for any of them is encoded here at once.
        frontends = {
            m.name: Frontend.from_pretrained(m.model, m.revision, self.config.limits)
            for m in self.config.served
        }
        self.service = Service(self.config, frontends, self._score, self._info, ingress_metrics())

    def reconfigure(self, user_config: dict) -> None:
        """Apply the ingress's `IngressState` (e.g. draining before a stop) on this replica."""
        state = IngressState.model_validate(user_config or {})
        self.service.draining = state.draining
        if state.draining:
            log.info("draining: new requests get 503; %d in flight", self.service.in_flight)

    async def pending(self) -> int | None:
        """Requests this replica accepted and has not answered yet; None until it drains."""
        return self.service.in_flight if self.service.draining else None

    async def _score(self, model_id: str, pairs, counts):
        # Serve routes the call to a classifier replica that holds `model_id` where one does.
        call = self.classifier.options(multiplexed_model_id=model_id)
        return await call.score_requests.remote(pairs, counts)

    async def _info(self) -> dict:
        return await self.classifier.info.remote()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.service)
