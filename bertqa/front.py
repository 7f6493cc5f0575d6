"""The public HTTP port: a small aiohttp front before tritonserver's own HTTP endpoint (on loopback).

Why a front: Triton 2.51's HTTP frontend (libevhtp) crashes with SIGSEGV on a body over ~4 MB sent as
``application/x-www-form-urlencoded`` (curl's default; upstream server#5840), has no body-size
limit, answers 500 for several client mistakes, and keeps reporting ready while a model's Python
stub is dead. The front
  * forwards only the content types Triton reads (JSON, octet-stream); anything else is sent as JSON,
  * answers 413 for bodies over ``max_body_bytes`` before Triton sees them,
  * checks inference requests (bertqa.request_checks) and answers 400 naming the problem,
  * keeps internal models (the steps of an ensemble) out of public inference (403),
  * answers 503 (with Retry-After) for a model the supervisor is healing, and for Triton restarting,
  * reports ready only when Triton is up, every public model passed its canary, and Triton agrees.
Everything else (metadata, statistics, admin APIs with their admin-key header) is passed through.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from bertqa.request_checks import RequestError, check_infer_request

MODEL_PATH = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/[^/]+)?/(?P<action>infer|ready)$")
FORWARDED_CONTENT_TYPES = ("application/json", "application/octet-stream")
# Headers that belong to one connection, or that aiohttp sets itself.
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "expect",
}
# Triton's 500s that are the client's mistake (request parsing), answered 400 instead.
_CLIENT_MISTAKES = re.compile(r"^(Unable to parse|failed to parse the request JSON buffer)")
_STUB_UNHEALTHY = re.compile(r"Stub process '(?P<instance>[^']+)' is not healthy")


@dataclass(frozen=True)
class FrontConfig:
    max_body_bytes: int = 8 * 1024 * 1024
    upstream_timeout_s: float = 120.0
    expose_internal_models: bool = False
    retry_after_s: int = 2


@dataclass
class ServingState:
    """What the supervisor knows, read by the front (both run on one event loop)."""

    triton_up: bool = False
    not_ready_reason: str = "tritonserver is starting"
    public: list[str] = field(default_factory=list)  # models clients may run (the ensembles)
    internal: dict[str, str] = field(default_factory=dict)  # step model -> the ensemble using it
    broken: dict[str, str] = field(default_factory=dict)  # public model -> why it is unhealthy
    check_now: asyncio.Event = field(default_factory=asyncio.Event)  # front -> supervisor

    @property
    def ready(self) -> bool:
        return self.triton_up and bool(self.public) and not self.broken

    def report_failure(self, model: str, reason: str) -> None:
        """Not ready from now on (readiness never lags behind a failure seen); the supervisor checks at once."""
        self.broken.setdefault(model, reason)
        self.check_now.set()

    def why_not_ready(self) -> str:
        if not self.triton_up:
            return self.not_ready_reason
        if self.broken:
            return "; ".join(f"{model}: {reason}" for model, reason in self.broken.items())
        return "no public model is loaded"


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class Front:
    def __init__(self, upstream: str, state: ServingState, config: FrontConfig = FrontConfig()):
        self.upstream = upstream.rstrip("/")
        self.state = state
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        # aiohttp's own limit also covers chunked bodies without a Content-Length.
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_route("*", "/{path:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,  # Content-Encoding passes through untouched
            # Only the client's own Accept-Encoding goes upstream: aiohttp's default (gzip, deflate) made
            # Triton compress answers for clients that never asked (perf_analyzer's libcurl then failed).
            skip_auto_headers=("Accept-Encoding",),
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=self.config.upstream_timeout_s),
        )

    async def _close(self, _app) -> None:
        await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in ("/v2/health/ready", "/v2/health/live"):
            return await self._health(request, path.endswith("ready"))
        match = MODEL_PATH.match(path)
        if match and match["action"] == "ready" and match["model"] in self.state.broken:
            return error(503, f"model {match['model']} is not ready: {self.state.broken[match['model']]}")
        if match and match["action"] == "infer" and request.method == "POST":
            return await self._infer(request, match["model"])
        return await self._forward(request, await self._body(request))

    async def _health(self, request: web.Request, readiness: bool) -> web.StreamResponse:
        if not self.state.triton_up or (readiness and not self.state.ready):
            return error(503, self.state.why_not_ready())
        return await self._forward(request, b"")

    async def _body(self, request: web.Request) -> bytes:
        declared = request.content_length
        if declared is not None and declared > self.config.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(
                max_size=self.config.max_body_bytes, actual_size=declared,
                text=json.dumps({"error": self._too_large(declared)}), content_type="application/json",
            )
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise web.HTTPRequestEntityTooLarge(
                max_size=self.config.max_body_bytes, actual_size=self.config.max_body_bytes + 1,
                text=json.dumps({"error": self._too_large(None)}), content_type="application/json",
            ) from None

    def _too_large(self, size: int | None) -> str:
        got = f" ({size:,} bytes)" if size is not None else ""
        return f"request body too large{got}: the limit is {self.config.max_body_bytes:,} bytes (--max-body-bytes)"

    async def _infer(self, request: web.Request, model: str) -> web.StreamResponse:
        if model in self.state.internal and not self.config.expose_internal_models:
            owner = self.state.internal[model]
            return error(403, f"model {model!r} is internal (a step of {owner!r}); send requests to {owner!r}")
        if model in self.state.broken:
            return error(503, f"model {model} is recovering ({self.state.broken[model]}); retry shortly",
                         **{"Retry-After": str(self.config.retry_after_s)})
        body = await self._body(request)
        header_length = request.headers.get("Inference-Header-Content-Length")
        try:
            check_infer_request(body, int(header_length) if header_length is not None else None)
        except ValueError as err:  # RequestError, or a header that is not a number
            return error(400, str(err) if isinstance(err, RequestError) else f"bad Inference-Header-Content-Length: {err}")
        response = await self._forward(request, body)
        return self._map_infer_error(response, model) if response.status == 500 else response

    def _map_infer_error(self, response: web.Response, model: str) -> web.Response:
        try:
            message = str(json.loads(response.body)["error"])
        except (ValueError, KeyError, TypeError):
            return response
        if _CLIENT_MISTAKES.match(message):
            return error(400, message)
        if _STUB_UNHEALTHY.search(message):
            self.state.report_failure(model, message)
            return error(503, f"model {model} lost a backend process and is being restored; retry shortly "
                              f"({message})", **{"Retry-After": str(self.config.retry_after_s)})
        return response

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        content_type = request.headers.get("Content-Type", "")
        if body and content_type.split(";")[0].strip().lower() not in FORWARDED_CONTENT_TYPES:
            # e.g. curl's default application/x-www-form-urlencoded, which crashes Triton 2.51 above ~4 MB.
            headers["Content-Type"] = "application/json"
        url = self.upstream + request.path_qs
        try:
            async with self._session.request(request.method, url, data=body or None, headers=headers) as upstream:
                payload = await upstream.read()
                kept = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                return web.Response(status=upstream.status, body=payload, headers=kept)
        except asyncio.TimeoutError:
            return error(504, f"no answer from the inference server within {self.config.upstream_timeout_s:g} s")
        except aiohttp.ClientError as err:
            self.state.check_now.set()
            return error(503, f"the inference server is not reachable ({err.__class__.__name__}); it is being "
                              "restarted, retry shortly", **{"Retry-After": str(self.config.retry_after_s)})
