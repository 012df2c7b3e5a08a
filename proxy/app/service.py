"""The HTTP service (`cutover serve`): the repository over JSON, with OpenAPI at /openapi.json.

Endpoints: `GET /metrics`, `GET /healthz` (liveness), `GET /readyz` (readiness: the primary
answers), `GET /search`, JSON CRUD at `/users`, `/study-books`, `/questions`, `/typing-logs`,
`/learning-events` (`/{id}` for one row; PUT and PATCH both change only the fields given),
`GET /admin/health` (each store's state) and `GET`/`PUT /admin/read-primary`.

Data endpoints need `Authorization: Bearer $API_TOKEN` when API_TOKEN is set; the admin endpoints
need `Bearer $ADMIN_TOKEN` and do not exist (404) while it is unset. A missing token is a 401, a
wrong one a 403, answered by `RequestGuard` from the headers before any byte of the body is read;
a body over MAX_BODY_BYTES is a 413 before it is parsed. Bad input is a 4xx with a JSON body
`{"error": ..., "field": ...}`, never a 5xx: request models mirror the repository's rules, and
the project's exceptions map to ValidationError 422, NotFoundError 404 (422 when it names a
referenced row), FlipRefused 409, StoreUnavailable 503. Anything else is a bug: logged as
`http.unhandled`, answered 500.

Log events: `http.unhandled`, `admin.read_primary` (structlog).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import secrets
import time
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException

from config import Settings
from config.settings import Backend, redact_dsn
from metrics import make_metrics_app
from proxy.errors import CutoverError, FlipRefused, NotFoundError, StoreUnavailable, ValidationError
from proxy.models import (
    LEARNING_EVENTS,
    QUESTIONS,
    STUDY_BOOKS,
    TYPING_LOGS,
    USERS,
    Entity,
    LearningEvent,
    Question,
    SearchResult,
    StudyBook,
    TypingLog,
    User,
    as_dict,
)
from proxy.repository import Repository, open_repository
from proxy.stores.searchtext import MAX_LIMIT, MAX_QUERY_CHARS
from proxy.validation import MAX_PAGE

log = structlog.get_logger("cutover.service")

INT32_MAX = 2**31 - 1
#: the service takes a description up to the size of a question (the library sets no limit)
MAX_DESCRIPTION_CHARS = QUESTIONS.column("question").max_length
PING_TIMEOUT_S = 2.0
READY_CACHE_S = 1.0


# -- request and response models ------------------------------------------------------------------

def _clean_text(value: str) -> str:
    """Text both stores can hold: no NUL, no lone surrogates (neither encodes as UTF-8)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


_Clean = AfterValidator(_clean_text)
#: JSON Schema patterns are unanchored: this one says "not blank"
_NOT_BLANK = r"\S"
_EMAIL = r"^[^@\s]+@[^@\s]+$"


def _required_text(entity: Entity, column: str) -> Any:
    """A non-blank string within the column's limit (the repository's own, from the spec)."""
    return Field(min_length=1, max_length=entity.column(column).max_length, pattern=_NOT_BLANK)


def _count(entity: Entity, column: str) -> Any:
    spec = entity.column(column)
    return Field(ge=spec.minimum, le=spec.maximum)


def _decimal(entity: Entity, column: str) -> Any:
    """Within the column's NUMERIC(precision, scale), and its range when it has one."""
    spec = entity.column(column)
    assert spec.precision is not None and spec.scale is not None
    bound = 10 ** (spec.precision - spec.scale)
    return Field(
        ge=spec.minimum, le=spec.maximum,
        gt=None if spec.minimum is not None else -bound,
        lt=None if spec.maximum is not None else bound,
        max_digits=spec.precision, decimal_places=spec.scale, allow_inf_nan=False,
    )


Name = Annotated[str, _required_text(USERS, "name"), _Clean]
Email = Annotated[str, Field(min_length=3, max_length=USERS.column("email").max_length,
                             pattern=_EMAIL), _Clean]
Title = Annotated[str, _required_text(STUDY_BOOKS, "title"), _Clean]
Language = Annotated[str, _required_text(QUESTIONS, "language"), _Clean]
Category = Annotated[str, _required_text(QUESTIONS, "category"), _Clean]
Difficulty = Annotated[str, _required_text(QUESTIONS, "difficulty"), _Clean]
Document = Annotated[str, _required_text(QUESTIONS, "question"), _Clean]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS), _Clean]
EventUser = Annotated[str, _required_text(LEARNING_EVENTS, "user_id"), _Clean]
AppId = Annotated[str, _required_text(LEARNING_EVENTS, "app_id"), _Clean]
Action = Annotated[str, _required_text(LEARNING_EVENTS, "action"), _Clean]
ObjectId = Annotated[str, Field(max_length=LEARNING_EVENTS.column("object_id").max_length),
                     _Clean]
Count = Annotated[int, _count(TYPING_LOGS, "wpm")]  # every count column has the same range
Accuracy = Annotated[Decimal, _decimal(TYPING_LOGS, "accuracy")]
Score = Annotated[Decimal, _decimal(LEARNING_EVENTS, "score")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserIn(_In):
    name: Name
    email: Email


class UserPatch(_In):
    name: Name | None = None
    email: Email | None = None


class StudyBookIn(_In):
    user_id: uuid.UUID
    title: Title
    description: Description | None = None


class StudyBookPatch(_In):
    user_id: uuid.UUID | None = None
    title: Title | None = None
    description: Description | None = None


class QuestionIn(_In):
    study_book_id: uuid.UUID
    language: Language
    category: Category
    difficulty: Difficulty
    question: Document
    answer: Document


class QuestionPatch(_In):
    study_book_id: uuid.UUID | None = None
    language: Language | None = None
    category: Category | None = None
    difficulty: Difficulty | None = None
    question: Document | None = None
    answer: Document | None = None


class TypingLogIn(_In):
    user_id: uuid.UUID
    question_id: uuid.UUID | None = None
    wpm: Count
    accuracy: Accuracy
    took_ms: Count


class TypingLogPatch(_In):
    user_id: uuid.UUID | None = None
    question_id: uuid.UUID | None = None
    wpm: Count | None = None
    accuracy: Accuracy | None = None
    took_ms: Count | None = None


class LearningEventIn(_In):
    user_id: EventUser
    app_id: AppId
    action: Action
    object_id: ObjectId | None = None
    score: Score | None = None
    duration_ms: Count | None = None


class LearningEventPatch(_In):
    user_id: EventUser | None = None
    app_id: AppId | None = None
    action: Action | None = None
    object_id: ObjectId | None = None
    score: Score | None = None
    duration_ms: Count | None = None


def _out_model(row: type, name: str | None = None, **descriptions: str) -> type[BaseModel]:
    """The response model of a row dataclass: its fields and types, `descriptions` added."""
    hints = typing.get_type_hints(row)
    fields: dict[str, Any] = {
        f.name: (hints[f.name], Field(description=descriptions.get(f.name)))
        for f in dataclasses.fields(row)
    }
    return create_model(name or f"{row.__name__}Out", **fields)


UserOut = _out_model(User)
StudyBookOut = _out_model(StudyBook)
QuestionOut = _out_model(Question)
TypingLogOut = _out_model(TypingLog, accuracy="a percentage with 2 decimal places, as text")
LearningEventOut = _out_model(LearningEvent, score="2 decimal places, as text")
SearchHit = _out_model(
    SearchResult, "SearchHit", highlight="HTML-escaped text with matches in <mark>...</mark>")


class ReadPrimaryIn(_In):
    read_primary: Backend
    force: bool = Field(
        False, description="flip even while the go/no-go verdict says no, or mirror writes to "
        "the target are pending or dead letters (an emergency rollback)")


class ReadPrimaryOut(BaseModel):
    read_primary: Backend
    dual_write: bool


class ErrorOut(BaseModel):
    error: str
    field: str | None = None


class StoreHealth(BaseModel):
    state: Literal["up", "down"]
    latency_ms: float | None = None
    outbox_pending: int = Field(description="mirror writes waiting to reach this store")
    error: str | None = None


class StatusOut(BaseModel):
    status: Literal["ok", "unavailable"]


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    read_primary: Backend
    dual_write: bool
    stores: dict[str, StoreHealth]


# -- errors ---------------------------------------------------------------------------------------

def _error(status: int, message: str, field: str | None = None,
           headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "field": field, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def _safe(text: str, settings: Settings) -> str:
    text = redact_dsn(text)
    if settings.postgres_dsn != "embedded":
        text = text.replace(settings.postgres_dsn, settings.safe_dsn)
    return text


def _install_error_handlers(app: FastAPI, settings: Settings) -> None:
    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ValidationError)
        return _error(422, exc.message, exc.field)

    async def on_not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, NotFoundError)
        if exc.field is not None:  # a referenced row is missing: the input is wrong
            return _error(422, f"references a {exc.entity} that does not exist", exc.field)
        return _error(404, f"{exc.entity} not found")

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StoreUnavailable)
        return _error(503, f"{exc.backend} store unavailable: {_safe(exc.reason, settings)}",
                      backend=exc.backend)

    async def on_flip_refused(request: Request, exc: Exception) -> Response:
        return _error(409, str(exc))

    async def on_cutover_error(request: Request, exc: Exception) -> Response:
        return _error(400, _safe(str(exc), settings))

    async def on_request_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
             "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request", "type": ""}
        loc = [p for p in first["loc"] if p not in ("body", "query", "path", "header")]
        # a JSON syntax error's location is a character offset, not a field
        field = ".".join(loc) if loc and first["type"] != "json_invalid" else None
        return _error(422, str(first["msg"]), field, detail=errors)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail),
                      headers=dict(exc.headers) if exc.headers else None)

    async def on_bug(request: Request, exc: Exception) -> Response:
        log.error("http.unhandled", method=request.method, path=request.url.path,
                  error=type(exc).__name__, exc_info=exc)
        return _error(500, "internal error")

    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(NotFoundError, on_not_found)
    app.add_exception_handler(StoreUnavailable, on_unavailable)
    app.add_exception_handler(FlipRefused, on_flip_refused)
    app.add_exception_handler(CutoverError, on_cutover_error)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_bug)


# -- auth -----------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <token>")


def _check_token(expected: str | None, given: HTTPAuthorizationCredentials | None,
                 what: str) -> None:
    if expected is None:
        return
    if given is None or given.scheme.lower() != "bearer":
        raise HTTPException(401, f"missing bearer token ({what})",
                            headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(given.credentials.encode(), expected.encode()):
        raise HTTPException(403, f"wrong bearer token ({what})")


def _repo(request: Request) -> Repository:
    repo: Repository | None = getattr(request.app.state, "repo", None)
    if repo is None:
        raise HTTPException(503, "the service is starting or stopping")
    return repo


RepoDep = Annotated[Repository, Depends(_repo)]


class _Readiness:
    """Whether the primary answers a ping, asked at most once per READY_CACHE_S (probes from
    every replica and load balancer then cost the store one ping a second)."""

    def __init__(self) -> None:
        self._checked = -float("inf")
        self._ok = False
        self._lock = asyncio.Lock()

    async def primary_answers(self, repo: Repository) -> bool:
        async with self._lock:
            if time.monotonic() - self._checked >= READY_CACHE_S:
                try:
                    await asyncio.wait_for(repo.stores[repo.read_primary].ping(),
                                           PING_TIMEOUT_S)
                    self._ok = True
                except Exception:
                    self._ok = False
                self._checked = time.monotonic()
            return self._ok


# -- the guard: tokens and the body cap, before any byte of the body is read ---------------------

#: paths open to anyone (probes, the scraper, the schema and its viewers)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs",
                        "/docs/oauth2-redirect", "/redoc"})

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _BodyTooLarge(HTTPException):
    """Raised by the guard's `receive` past the limit: an HTTPException, since FastAPI turns any
    other exception raised while it reads a body into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes (MAX_BODY_BYTES)",
                         headers={"Connection": "close"})


def _token_refusal(expected: str, header: bytes | None, what: str) -> tuple[int, str] | None:
    """None when `header` carries the bearer token `expected`, else (status, message)."""
    scheme, _, given = (header or b"").decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, f"missing bearer token ({what})"
    if not secrets.compare_digest(given.strip().encode("latin-1"), expected.encode()):
        return 403, f"wrong bearer token ({what})"
    return None


class RequestGuard:
    """Pure ASGI middleware in front of the app: a request without the token its path needs
    (API_TOKEN for the data endpoints, ADMIN_TOKEN for /admin) is refused from its headers
    alone, and a body over `max_body` bytes gets a 413, from its Content-Length when it has one,
    else when the bytes streamed in pass the limit. The app never holds more of a body than
    the limit: FastAPI reads and parses a whole body before any dependency (the token check
    among them) runs."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.max_body = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        refusal = self._refusal(scope["path"], headers.get(b"authorization"))
        if refusal is not None:
            await self._answer(send, *refusal)
            return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await self._answer(send, 400, "Content-Length is not a number")
                return
            if declared > self.max_body:
                await self._answer(send, 413, self._too_large())
                return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge(self.max_body)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._answer(send, 413, self._too_large())

    def _too_large(self) -> str:
        return str(_BodyTooLarge(self.max_body).detail)

    def _refusal(self, path: str, authorization: bytes | None) -> tuple[int, str] | None:
        if path in OPEN_PATHS:
            return None
        if path == "/admin" or path.startswith("/admin/"):
            if self.settings.admin_token is None:
                return 404, "admin endpoints are off: ADMIN_TOKEN is not set"
            return _token_refusal(self.settings.admin_token, authorization, "ADMIN_TOKEN")
        if self.settings.api_token is None:
            return None
        return _token_refusal(self.settings.api_token, authorization, "API_TOKEN")

    @staticmethod
    async def _answer(send: Send, status: int, message: str) -> None:
        body = json.dumps({"error": message, "field": None}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        if status in (400, 413):
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# -- the app --------------------------------------------------------------------------------------

def create_app(
    settings: Settings, repo: Repository | None = None, *, init_schema: bool = True
) -> FastAPI:
    """The service's ASGI app. Without `repo`, the app opens (and closes) one in its lifespan."""
    registry: CollectorRegistry = repo.metrics.registry if repo is not None else CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if repo is not None:
            app.state.repo = repo
            yield
            return
        async with open_repository(settings, registry=registry,
                                   init_schema=init_schema) as opened:
            app.state.repo = opened
            try:
                yield
            finally:
                app.state.repo = None

    app = FastAPI(
        title="cutover",
        version="0.1.0",
        summary="Dual-write repository for the SQLite -> PostgreSQL cutover, over HTTP.",
        lifespan=lifespan,
        responses={
            401: {"model": ErrorOut, "description": "missing bearer token"},
            403: {"model": ErrorOut, "description": "wrong bearer token"},
            422: {"model": ErrorOut, "description": "invalid input"},
            503: {"model": ErrorOut, "description": "the primary store is unreachable"},
        },
    )
    app.state.repo = repo
    app.state.settings = settings
    _install_error_handlers(app, settings)
    # an instance, not a function: Starlette routes to it as an ASGI app
    app.add_route("/metrics", make_metrics_app(registry),  # type: ignore[arg-type]
                  methods=["GET"], include_in_schema=False)

    async def data_auth(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        _check_token(settings.api_token, creds, "API_TOKEN")

    async def admin_auth(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if settings.admin_token is None:
            raise HTTPException(404, "admin endpoints are off: ADMIN_TOKEN is not set")
        _check_token(settings.admin_token, creds, "ADMIN_TOKEN")

    @app.get("/healthz", response_model=StatusOut, tags=["operations"])
    async def healthz() -> StatusOut:
        """Liveness: the process answers. No store is touched, no token needed."""
        return StatusOut(status="ok")

    readiness = _Readiness()

    @app.get("/readyz", response_model=StatusOut, tags=["operations"],
             responses={503: {"model": StatusOut, "description": "not ready"}})
    async def readyz(request: Request, response: Response) -> StatusOut:
        """Readiness: the primary store answers (asked at most once a second). No detail: the
        stores' states are at `GET /admin/health`."""
        repo: Repository | None = getattr(request.app.state, "repo", None)
        if repo is None or not await readiness.primary_answers(repo):
            response.status_code = 503
            return StatusOut(status="unavailable")
        return StatusOut(status="ok")

    async def health_details(repo: RepoDep, response: Response) -> HealthOut:
        """Each store pinged now: its state, latency and outbox; 503 when the primary is down."""
        stores = {}
        for backend, store in repo.stores.items():
            pending = int(repo.metrics.registry.get_sample_value(
                "cutover_outbox_pending", {"backend": backend}) or 0)
            start = time.perf_counter()
            try:
                await asyncio.wait_for(store.ping(), PING_TIMEOUT_S)
            except StoreUnavailable as exc:
                stores[backend] = StoreHealth(state="down", outbox_pending=pending,
                                              error=_safe(exc.reason, settings)[:200])
            except TimeoutError:
                stores[backend] = StoreHealth(state="down", outbox_pending=pending,
                                              error=f"no answer within {PING_TIMEOUT_S:.0f} s")
            except Exception as exc:
                stores[backend] = StoreHealth(state="down", outbox_pending=pending,
                                              error=type(exc).__name__)
            else:
                stores[backend] = StoreHealth(
                    state="up", outbox_pending=pending,
                    latency_ms=round((time.perf_counter() - start) * 1000, 2))
        primary = repo.read_primary
        if stores[primary].state == "down":
            status: Literal["ok", "degraded", "unavailable"] = "unavailable"
            response.status_code = 503
        elif any(s.state == "down" for s in stores.values()):
            status = "degraded"
        else:
            status = "ok"
        return HealthOut(status=status, read_primary=primary,
                         dual_write=repo.settings.dual_write, stores=stores)

    data = APIRouter(dependencies=[Depends(data_auth)])

    @data.get("/search", response_model=list[SearchHit],  # type: ignore[valid-type]
               tags=["search"])
    async def search(
        repo: RepoDep,
        q: Annotated[str, Query(max_length=MAX_QUERY_CHARS,
                                description="whitespace-separated terms, all required")],
        user_id: uuid.UUID,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    ) -> list[SearchResult]:
        """Search one user's questions on the primary (shadow-compared off the request's path)."""
        return await repo.search_questions(q, user_id=user_id, limit=limit)

    _crud(data, "/users", "user", UserIn, UserPatch, UserOut, owner=None, list_name="users")
    _crud(data, "/study-books", "study_book", StudyBookIn, StudyBookPatch, StudyBookOut,
          owner=("user_id", uuid.UUID), list_name="study_books")
    _crud(data, "/questions", "question", QuestionIn, QuestionPatch, QuestionOut,
          owner=("study_book_id", uuid.UUID), list_name="questions")
    _crud(data, "/typing-logs", "typing_log", TypingLogIn, TypingLogPatch, TypingLogOut,
          owner=("user_id", uuid.UUID), list_name="typing_logs", create="record_typing_log")
    _crud(data, "/learning-events", "learning_event", LearningEventIn, LearningEventPatch,
          LearningEventOut, owner=("user_id", EventUser), list_name="learning_events",
          create="record_learning_event")
    app.include_router(data)

    admin = APIRouter(prefix="/admin", dependencies=[Depends(admin_auth)], tags=["admin"],
                      responses={404: {"model": ErrorOut, "description": "ADMIN_TOKEN unset"}})

    @admin.get("/read-primary", response_model=ReadPrimaryOut)
    async def get_read_primary(repo: RepoDep) -> ReadPrimaryOut:
        """The store that answers reads and is the source of truth for writes."""
        return ReadPrimaryOut(read_primary=repo.read_primary,
                              dual_write=repo.settings.dual_write)

    @admin.put("/read-primary", response_model=ReadPrimaryOut,
               responses={409: {"model": ErrorOut, "description": "flip refused"}})
    async def put_read_primary(body: ReadPrimaryIn, repo: RepoDep) -> ReadPrimaryOut:
        """Flip the primary (the rollback is a flip back). Refused, unless `force`, by the
        flip's gate (`proxy.flip_gate`): dead letters or a backlog of mirror writes for the
        target, and for PostgreSQL a go/no-go verdict that says no."""
        target = body.read_primary
        if not body.force:
            refused = await repo.flip_refusal(target, override="force to override")
            if refused is not None:
                raise FlipRefused(f"cannot flip to {target}: {refused}")
        old = repo.read_primary
        await repo.set_read_primary(target, force=body.force)
        log.info("admin.read_primary", old=old, new=target, forced=body.force)
        return ReadPrimaryOut(read_primary=repo.read_primary,
                              dual_write=repo.settings.dual_write)

    admin.add_api_route(
        "/health", health_details, methods=["GET"], response_model=HealthOut,
        responses={503: {"model": HealthOut, "description": "the primary is unreachable"}})
    app.include_router(admin)
    # outermost but for Starlette's error middleware: before routing, before any body is read
    app.add_middleware(RequestGuard, settings=settings)
    return app


def _signed(fn: Callable[..., Awaitable[Any]], name: str, doc: str,
            **params: Any) -> Callable[..., Awaitable[Any]]:
    """Give a `**kwargs` handler the explicit signature FastAPI reads its parameters from.

    The CRUD handlers are made per entity, so their types are values here, not names that
    FastAPI could resolve from this module's (postponed, string) annotations.
    """
    fn.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, annotation=annotation[0],
                          default=annotation[1] if len(annotation) > 1 else inspect.Parameter.empty)
        for key, annotation in params.items()
    ])
    fn.__name__ = name
    fn.__doc__ = doc
    return fn


Row = User | StudyBook | Question | TypingLog | LearningEvent


def _crud(
    router: APIRouter, path: str, entity: str, model_in: type[BaseModel],
    model_patch: type[BaseModel], model_out: type[BaseModel], *,
    owner: tuple[str, Any] | None, list_name: str, create: str | None = None,
) -> None:
    """GET list (by owner where one exists), POST, GET/PUT/PATCH/DELETE /{id} for one entity."""
    tag = path.strip("/")
    create_name = create or f"create_{entity}"
    limit = (Annotated[int, Query(ge=1, le=MAX_PAGE)], 100)
    offset = (Annotated[int, Query(ge=0, le=INT32_MAX)], 0)
    repo_dep = (RepoDep,)
    row_id = (uuid.UUID,)
    not_found: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorOut, "description": "no such row"}}

    async def list_rows(**kw: Any) -> list[dict[str, Any]]:
        method: Callable[..., Awaitable[list[Row]]] = getattr(kw["repo"], f"list_{list_name}")
        args = [kw["owner"]] if owner is not None else []
        return [as_dict(r) for r in await method(*args, limit=kw["limit"], offset=kw["offset"])]

    owner_param = {} if owner is None else {
        "owner": (Annotated[owner[1], Query(alias=owner[0])],)
    }
    router.add_api_route(
        path, _signed(list_rows, f"list_{list_name}",
                      f"List {tag}" + (f" of one `{owner[0]}`" if owner else "") +
                      ", oldest first.",
                      repo=repo_dep, **owner_param, limit=limit, offset=offset),
        methods=["GET"], response_model=list[model_out],  # type: ignore[valid-type]
        tags=[tag])

    async def create_row(**kw: Any) -> dict[str, Any]:
        method: Callable[..., Awaitable[Row]] = getattr(kw["repo"], create_name)
        return as_dict(await method(**kw["body"].model_dump()))

    router.add_api_route(
        path, _signed(create_row, create_name,
                      f"Create one row of {tag} from the seed's column names; answers the row, "
                      "`id` included.", body=(model_in,), repo=repo_dep),
        methods=["POST"], response_model=model_out, status_code=201, tags=[tag])

    async def get_row(**kw: Any) -> dict[str, Any]:
        method: Callable[..., Awaitable[Row]] = getattr(kw["repo"], f"get_{entity}")
        return as_dict(await method(kw["id"]))

    router.add_api_route(
        f"{path}/{{id}}", _signed(get_row, f"get_{entity}", f"One row of {tag}.", id=row_id,
                                  repo=repo_dep),
        methods=["GET"], response_model=model_out, tags=[tag], responses=not_found)

    async def update_row(**kw: Any) -> dict[str, Any]:
        method: Callable[..., Awaitable[Row]] = getattr(kw["repo"], f"update_{entity}")
        return as_dict(await method(kw["id"], **kw["body"].model_dump(exclude_unset=True)))

    for verb in ("PUT", "PATCH"):
        router.add_api_route(
            f"{path}/{{id}}",
            _signed(update_row, f"update_{entity}",
                    f"Change the fields given of one row of {tag} (PUT and PATCH are both "
                    "partial).", id=row_id, body=(model_patch,), repo=repo_dep),
            methods=[verb], response_model=model_out, tags=[tag], responses=not_found,
            name=f"update_{entity}_{verb.lower()}")

    async def delete_row(**kw: Any) -> Response:
        method: Callable[..., Awaitable[None]] = getattr(kw["repo"], f"delete_{entity}")
        await method(kw["id"])
        return Response(status_code=204)

    router.add_api_route(
        f"{path}/{{id}}",
        _signed(delete_row, f"delete_{entity}",
                f"Delete one row of {tag} (and what the seed's foreign keys cascade to).",
                id=row_id, repo=repo_dep),
        methods=["DELETE"], status_code=204, response_class=Response, tags=[tag],
        responses=not_found)
