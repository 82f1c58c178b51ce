"""The FastAPI application of ``vaekit serve``: a JSON API over an ``Explorer`` and the explorer page.

Before anything else, ``security.AccessGuard`` checks who is asking: the Host header (421), the
origin (403) and, when the service has one, the token (401). Requests are then validated twice: their
form by pydantic (types, finite numbers, required fields) and their content against the model by the
``Explorer`` (shapes, counts, values). Whatever is wrong comes back as
a 4xx answer whose ``detail`` says what: 413 for a body or image over the size limits (counted while
the body is read, so an oversized body is never held in memory), 415 for an upload that is neither an
image nor JSON, 422 for everything else. Model work runs on one worker thread, so the event loop stays
free and the model serves one request at a time; when ``max_pending`` requests already wait, the answer
is 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..errors import VaekitError
from .explorer import Explorer, RequestTooLarge, UnsupportedInput
from .security import AccessGuard, AccessPolicy

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_REPORTED_ERRORS = 5
# Bytes of an oversized body still read (and thrown away) before the 413 goes out: a client that is
# still sending when the server closes the connection may see a reset instead of the answer.
DRAIN_BYTES = 16 * 1024 * 1024
PAGE_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                 b"script-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
]

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Seed = Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]
MAX_LABEL_CHARS = 200
LABEL_HELP = ("the class to generate (a conditional model: one of /api/info's classes, by name or index); "
              "required by a conditional model, refused by an unconditional one")
UPLOAD_LABEL_HELP = ("the class of every uploaded example (a conditional model: one of /api/info's classes, by name "
                     "or index); required by a conditional model, refused by an unconditional one")


def _one_label_error(value: Any, handler: Callable[[Any], Any]) -> Any:
    """One message for a label of the wrong type, not one per member of the union."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError("label_type", "must be a class name (text of at most {limit} characters) or a "
                                                "class index (a whole number)", {"limit": MAX_LABEL_CHARS}) from None


Label = Annotated[Annotated[int, Field(strict=True)] | Annotated[str, Field(max_length=MAX_LABEL_CHARS)],
                  WrapValidator(_one_label_error)]


# --- request and response bodies -------------------------------------------------------------------

class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleRequest(StrictModel):
    n: Annotated[int, Field(strict=True, ge=1, description="how many draws z ~ N(0, I)")] = 8
    seed: Seed | None = Field(None, description="seed of the draws; a fresh random one when omitted (returned)")
    label: Label | None = Field(None, description=LABEL_HELP)


class DecodeRequest(StrictModel):
    z: list[list[FiniteFloat]] = Field(description="latent vectors, shape (n, latent_dim)")
    label: Label | None = Field(None, description=LABEL_HELP)


class InterpolateRequest(StrictModel):
    z_start: list[FiniteFloat] = Field(description="first latent point (latent_dim,)")
    z_end: list[FiniteFloat] = Field(description="last latent point (latent_dim,)")
    steps: Annotated[int, Field(strict=True, ge=2)] = 16
    method: Literal["linear", "spherical"] = "linear"
    label: Label | None = Field(None, description=LABEL_HELP)


class Outputs(BaseModel):
    kind: Literal["image", "vector"]
    images: list[str] | None = Field(None, description="PNG files, base64-encoded (image models)")
    rows: list[list[float]] | None = Field(None, description="decoded rows in the data's original units (vector models)")
    columns: list[str] | None = Field(None, description="the column names of the rows")


class SampleResponse(BaseModel):
    seed: int
    z: list[list[float]]
    outputs: Outputs


class DecodeResponse(BaseModel):
    z: list[list[float]]
    outputs: Outputs


class EncodeResponse(BaseModel):
    mean: list[list[float]] = Field(description="posterior means E[z|x], shape (n, latent_dim)")
    variance: list[list[float]] = Field(description="posterior variances, shape (n, latent_dim)")
    note: str = Field(description="how the upload was read")


class ReconstructResponse(BaseModel):
    inputs: Outputs = Field(description="the examples as the model sees them (resized, channels converted)")
    reconstructions: Outputs
    mean: list[list[float]]
    note: str


class ScoreResponse(BaseModel):
    score: str = Field(description="the explorer's anomaly score (the run's detector's, or the default)")
    values: list[float] = Field(description="that score per example; higher = more anomalous")
    scores: dict[str, list[float]] = Field(description="every score that applies, per example")
    percentiles: list[float] | None = Field(None, description="share of the reference data scoring at most this, %")
    threshold: float | None = Field(None, description="the run's detector's threshold")
    is_anomaly: list[bool] | None = None
    note: str


class Anomaly(BaseModel):
    score: str
    value: float
    scores: dict[str, float]
    percentile: float | None = None
    threshold: float | None = None
    is_anomaly: bool | None = None


class Explanation(BaseModel):
    kind: Literal["image", "vector"]
    image: str | None = Field(None, description="heat map PNG, base64: each pixel's share of -log p(x|z) (viridis, "
                                                  "0 to max_nats)")
    max_nats: float | None = Field(None, description="the largest share of one pixel, nats (image models)")
    total_nats: float = Field(description="-log p(x|z) averaged over posterior draws: the sum of all shares, nats")
    columns: list[str] | None = Field(None, description="the column names (vector models)")
    contributions: list[float] | None = Field(None, description="each column's share, nats (vector models)")


class AnalyzeResponse(BaseModel):
    input: Outputs
    reconstruction: Outputs
    mean: list[float]
    variance: list[float]
    explanation: Explanation
    anomaly: Anomaly
    note: str


class ExamplesResponse(BaseModel):
    indices: list[int]
    seed: int
    z: list[list[float]] = Field(description="latent means of the examples")
    labels: list[str | None]
    outputs: Outputs


class MapPoints(BaseModel):
    u: list[float]
    v: list[float]
    labels: list[str | None]
    classes: list[str] = Field(description="the distinct labels in class order (the legend)")
    outside: int


class LatentMapResponse(BaseModel):
    steps: int
    z1_axis: list[float] = Field(description="z1 at the centres of the columns, left to right")
    z2_axis: list[float] = Field(description="z2 at the centres of the rows, top to bottom")
    points: MapPoints | None = Field(None, description="reference latent means, as fractions of width and height")
    image: str | None = Field(None, description="the decoded grid, a base64 PNG (image models)")


class ErrorResponse(BaseModel):
    detail: str = Field(description="what is wrong, and what to do")
    errors: list[dict[str, Any]] | None = Field(None, description="a malformed request's problems (loc, type, msg)")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# The answers every endpoint may give besides its own (FastAPI would document 422 with its own body, which this
# service does not send: its 422 says what is wrong in one line).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("the body or the Host header cannot be parsed"),
    401: _error("the service has a token and the request did not bring it"),
    403: _error("the request comes from another origin"),
    413: _error("the body or an uploaded image is larger than the service accepts"),
    421: _error("the Host header names a host this service does not answer to"),
    422: _error("the request is invalid: its form (types, required fields) or its content for this model"),
    503: _error("more requests wait for the model than the service queues; retry after Retry-After seconds"),
}
UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {415: _error("the upload is neither an image nor JSON")}


# --- running model work off the event loop ------------------------------------------------------------

class ServiceBusy(Exception):
    """More requests wait for the model than ``max_pending`` allows."""


class ModelWorker:
    """One thread for all model work: the event loop never blocks, and the model serves one request at a time."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vaekit-model")
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    def _finished(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            if self._pending >= self.max_pending:
                raise ServiceBusy(f"the model is busy with {self._pending} requests; try again shortly")
            self._pending += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._finished(None)  # type: ignore[arg-type]
            raise
        future.add_done_callback(self._finished)  # counts down when the work ends, even if the client left
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# --- ASGI middleware ----------------------------------------------------------------------------

class BodySizeLimit:
    """Answer 413 to a request whose body exceeds ``max_bytes``, counting bytes as they arrive.

    A declared Content-Length over the limit is refused before anything is read; a body that grows
    past it (chunked uploads) stops the application's read at that point. Either way what was sent
    beyond the limit is read and discarded (up to ``DRAIN_BYTES``) so the client gets the answer.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> bytes:
        mib = self.max_bytes / 2**20
        return (b'{"detail":"the request body is larger than the service accepts: at most %d bytes (%.1f MiB)"}'
                % (self.max_bytes, mib))

    async def _reject(self, receive: Any, send: Any, received: int, done: bool) -> None:
        while not done and received <= self.max_bytes + DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            done = not message.get("more_body", False)
        body = self._message()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > self.max_bytes:
            await self._reject(receive, send, 0, declared > self.max_bytes + DRAIN_BYTES)
            return
        state = {"received": 0, "exceeded": False, "started": False, "done": False}

        async def limited_receive() -> dict:
            if state["exceeded"]:
                raise RequestTooLarge("the request body is too large")
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                state["done"] = not message.get("more_body", False)
                if state["received"] > self.max_bytes:
                    state["exceeded"] = True
                    raise RequestTooLarge("the request body is too large")
            return message

        async def guarded_send(message: dict) -> None:
            if state["exceeded"]:  # whatever the application answers after its read was cut off, the client gets 413
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._reject(receive, send, state["received"], state["done"])
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["exceeded"]:
                raise
            if not state["started"]:
                state["started"] = True
                await self._reject(receive, send, state["received"], state["done"])


class SecurityHeaders:
    """``nosniff`` on every answer; a strict Content-Security-Policy on the page and its files."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = scope.get("path", "") == "/" or scope.get("path", "").startswith("/static/")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + [(b"x-content-type-options", b"nosniff")]
                if page:
                    headers += PAGE_HEADERS
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- errors --------------------------------------------------------------------------------------

def _where(loc: tuple) -> str:
    """('body', 'z', 0, 3) -> 'z[0][3]'; ('query', 'n') -> 'n'."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "the request body"


def _describe(error: dict) -> str:
    loc, kind = tuple(error.get("loc", ())), error.get("type", "")
    if loc[-1:] == ("file",) and kind == "missing":
        return "upload the example as multipart form data in a field named 'file'"
    if loc[-1:] == ("file",):
        return "'file' must be an uploaded file (multipart form data with a filename), not a text field"
    if kind == "json_invalid":
        return f"the body is not valid JSON: {error.get('ctx', {}).get('error', 'decode error')}"
    if kind == "missing":
        return f"{_where(loc)} is required"
    if kind == "extra_forbidden":
        return f"{_where(loc)} is not a field of this request"
    return f"{_where(loc)}: {error.get('msg', 'invalid')}"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    messages = [_describe(e) for e in errors[:MAX_REPORTED_ERRORS]]
    detail = "; ".join(dict.fromkeys(messages))
    if len(errors) > MAX_REPORTED_ERRORS:
        detail += f"; and {len(errors) - MAX_REPORTED_ERRORS} more problems"
    brief = [{"loc": list(e.get("loc", ())), "type": e.get("type"), "msg": e.get("msg")} for e in errors[:MAX_REPORTED_ERRORS]]
    return JSONResponse(status_code=422, content={"detail": detail, "errors": brief})


async def _vaekit_error(request: Request, exc: VaekitError) -> JSONResponse:
    status = 413 if isinstance(exc, RequestTooLarge) else 415 if isinstance(exc, UnsupportedInput) else 422
    return JSONResponse(status_code=status, content={"detail": str(exc)})


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        return JSONResponse(status_code=400, content={"detail": "the body is JSON nested too deeply to be read"})
    return await http_exception_handler(request, exc)


async def _busy(request: Request, exc: ServiceBusy) -> JSONResponse:
    return JSONResponse(status_code=503, content={"detail": str(exc)}, headers={"Retry-After": "1"})


# --- the application -----------------------------------------------------------------------------

UPLOAD = Annotated[UploadFile, File(description="the example: an image file, or a JSON array (or object of columns)")]
INVERT = Annotated[bool, Form(description="invert the values (1 - x), for images drawn dark on light")]
UPLOAD_LABEL = Annotated[str | None, Form(max_length=MAX_LABEL_CHARS, description=UPLOAD_LABEL_HELP)]
QUERY_LABEL = Annotated[str | None, Query(max_length=MAX_LABEL_CHARS, description=LABEL_HELP)]


def create_app(explorer: Explorer, *, allowed_hosts: Iterable[str] = (), token: str | None = None) -> FastAPI:
    """The service over ``explorer``: JSON API under ``/api``, the page at ``/``, OpenAPI schema at ``/openapi.json``.

    It answers to loopback host names and addresses, the names in ``allowed_hosts`` and the address a
    connection reached; with a ``token``, every request needs it (``Authorization: Bearer TOKEN``, or the
    cookie the link ``/?token=TOKEN`` sets). Cross-origin requests are refused. See ``vaekit.serve.security``.
    """
    access = AccessPolicy.build(allowed_hosts, token)
    worker = ModelWorker(explorer.limits.max_pending)
    info = explorer.info()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        worker.shutdown()

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN (blank offline, and third-party code
    # on the service's origin); /openapi.json serves any OpenAPI tool.
    app = FastAPI(title="vaekit serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  responses=ERROR_RESPONSES,
                  description="Explore a trained variational autoencoder: sample, decode, encode, reconstruct, "
                              "score and interpolate. Uploads are multipart form data in a field named `file`. A conditional "
                              "model (`conditional` in /api/info) needs a `label`, one of its `classes`, on every "
                              "generation and upload request.")
    app.state.explorer = explorer
    app.state.worker = worker
    app.state.access = access
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(VaekitError, _vaekit_error)
    app.add_exception_handler(ServiceBusy, _busy)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(BodySizeLimit, max_bytes=explorer.limits.max_upload_bytes)
    app.add_middleware(AccessGuard, policy=access)  # before the body is read; its refusals get SecurityHeaders' too
    app.add_middleware(SecurityHeaders)

    async def upload(file: UploadFile, invert: bool) -> tuple[Any, str]:
        data = await file.read()  # at most max_upload_bytes: the body limit stopped anything larger
        return await worker.run(explorer.read_upload, data, invert)

    @app.get("/api/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """Answers at once, even while the model is busy: the event loop is never blocked by inference."""
        return {"status": "ok", "pending": worker.pending}

    @app.get("/api/info", tags=["model"])
    async def model_info() -> dict[str, Any]:
        """The model, its data, the latent dimensions ranked by information, the anomaly score and the limits."""
        return info

    @app.post("/api/sample", tags=["generate"], response_model=SampleResponse)
    async def sample(request: SampleRequest) -> dict[str, Any]:
        """Draw ``n`` latent vectors from the prior N(0, I) and decode them (the same draws as ``VAE.sample``)."""
        def work():
            z, x, seed = explorer.sample(request.n, request.seed, request.label)
            return {"seed": seed, "z": z.tolist(), "outputs": explorer.outputs(x)}
        return await worker.run(work)

    @app.get("/api/sample.png", tags=["generate"], response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    async def sample_png(n: Annotated[int, Query(ge=1)] = 16, seed: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
                         label: QUERY_LABEL = None):
        """``n`` prior draws decoded and tiled into one PNG (image models)."""
        def work():
            _, x, used = explorer.sample(n, seed, label)
            return explorer.png_grid(x), used
        png, used = await worker.run(work)
        return Response(png, media_type="image/png", headers={"X-Vaekit-Seed": str(used)})

    @app.post("/api/decode", tags=["generate"], response_model=DecodeResponse)
    async def decode(request: DecodeRequest) -> dict[str, Any]:
        """Decode latent vectors to the mean of p(x|z), in the data's original units."""
        def work():
            z, x = explorer.decode(request.z, request.label)
            return {"z": z.tolist(), "outputs": explorer.outputs(x)}
        return await worker.run(work)

    @app.post("/api/decode.png", tags=["generate"], response_class=Response,
              responses={200: {"content": {"image/png": {}}}})
    async def decode_png(request: DecodeRequest):
        """Decode latent vectors and tile the images into one PNG (image models)."""
        png = await worker.run(lambda: explorer.png_grid(explorer.decode(request.z, request.label)[1]))
        return Response(png, media_type="image/png")

    @app.post("/api/encode", tags=["examples"], response_model=EncodeResponse, responses=UPLOAD_RESPONSES)
    async def encode(file: UPLOAD, invert: INVERT = False, label: UPLOAD_LABEL = None) -> dict[str, Any]:
        """Mean and variance of q(z|x) (q(z|x, label)) for the uploaded example(s)."""
        y = explorer.label(label)
        x, note = await upload(file, invert)
        mean, variance = await worker.run(explorer.encode, x, y)
        return {"mean": mean.tolist(), "variance": variance.tolist(), "note": note}

    @app.post("/api/reconstruct", tags=["examples"], response_model=ReconstructResponse, responses=UPLOAD_RESPONSES)
    async def reconstruct(file: UPLOAD, invert: INVERT = False, label: UPLOAD_LABEL = None) -> dict[str, Any]:
        """The uploaded example(s) as the model sees them, and decoded from their latent means."""
        y = explorer.label(label)
        x, note = await upload(file, invert)

        def work():
            mean = explorer.encode(x, y)[0]
            return {"inputs": explorer.outputs(x), "reconstructions": explorer.outputs(explorer.vae.decode(mean, y=y)),
                    "mean": mean.tolist(), "note": note}
        return await worker.run(work)

    @app.post("/api/score", tags=["examples"], response_model=ScoreResponse, responses=UPLOAD_RESPONSES)
    async def score(file: UPLOAD, invert: INVERT = False, label: UPLOAD_LABEL = None) -> dict[str, Any]:
        """Anomaly scores of the uploaded example(s): higher = more anomalous (a conditional model's: for the class)."""
        y = explorer.label(label)
        x, note = await upload(file, invert)
        return {**await worker.run(explorer.score, x, y), "note": note}

    @app.post("/api/analyze", tags=["examples"], response_model=AnalyzeResponse, responses=UPLOAD_RESPONSES)
    async def analyze(file: UPLOAD, invert: INVERT = False, label: UPLOAD_LABEL = None) -> dict[str, Any]:
        """One example: as the model sees it, its reconstruction, its posterior and its anomaly score."""
        y = explorer.label(label)
        x, note = await upload(file, invert)
        return {**await worker.run(explorer.analyze, x, y), "note": note}

    @app.post("/api/interpolate", tags=["latent space"], response_model=DecodeResponse)
    async def interpolate(request: InterpolateRequest) -> dict[str, Any]:
        """Decoded points on the line (or, with ``spherical``, the great circle) between two latent points."""
        def work():
            z, x = explorer.interpolate(request.z_start, request.z_end, request.steps, request.method, request.label)
            return {"z": z.tolist(), "outputs": explorer.outputs(x)}
        return await worker.run(work)

    @app.get("/api/examples", tags=["latent space"], response_model=ExamplesResponse)
    async def examples(n: Annotated[int, Query(ge=1)] = 8,
                       seed: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None) -> dict[str, Any]:
        """Random examples of the reference data with their latent means."""
        return await worker.run(explorer.examples, n, seed)

    @app.get("/api/latent-map", tags=["latent space"], response_model=LatentMapResponse)
    async def latent_map(steps: Annotated[int, Query(ge=2)] = 16, label: QUERY_LABEL = None) -> dict[str, Any]:
        """For a 2-D latent: the decoded grid over the prior's quantiles (under ``label``, a conditional model's) and
        the reference points on it."""
        return await worker.run(explorer.latent_map, steps, label)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
