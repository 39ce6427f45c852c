"""HTTP servers of the roles: the operations endpoints every role serves, and ports bound up front.

``/healthz`` is liveness: 200 while the process runs, with the status of everything it depends
on (``"status": "ok"`` or ``"degraded"``) — a bad rules.yaml or a Redis outage must not make an
orchestrator restart a process that is doing what it can. ``/readyz`` is readiness for this
role's work: 503 when it cannot do it (the web role only needs the database: links in emails
work while the broker is down). ``/metrics`` is Prometheus.
"""

from __future__ import annotations

import errno
import socket
import threading
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from campaigns.errors import ConfigurationError
from worker import observability
from worker.runtime import Runtime


def ops_router(rt: Runtime, role: str) -> APIRouter:
    router = APIRouter()
    registry = observability.metrics_registry(rt)

    @router.get("/healthz")
    def healthz() -> JSONResponse:
        healthy, checks = observability.health(rt)
        return JSONResponse({"status": "ok" if healthy else "degraded", "role": role, **checks})

    @router.get("/readyz")
    def readyz() -> JSONResponse:
        ready, body = observability.readiness(rt, role)
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics")
    def metrics() -> Response:
        return Response(observability.render_metrics(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def ops_app(rt: Runtime, role: str) -> FastAPI:
    """What the scheduler and worker roles serve on their metrics port."""
    app = FastAPI(title=f"retention {role}", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(ops_router(rt, role))
    return app


def bind(host: str, port: int, *, option: str) -> socket.socket:
    """The listening socket, or one line saying why not (before anything else starts)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror} (check the host)") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(
                f"port {port} on {host} is in use: stop what listens there or choose another "
                f"with {option}") from None
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror} "
                                 f"(choose another with {option})") from None
    sock.set_inheritable(True)
    return sock


class HttpServer:
    """uvicorn on an already-bound socket, in a thread (signals stay the role's)."""

    def __init__(self, app: Any, sock: socket.socket, name: str) -> None:
        import uvicorn

        self.sock = sock
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name=name,
                                       daemon=True)

    def start(self) -> HttpServer:
        self.thread.start()
        return self

    def stop(self, timeout: float) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout)
        self.sock.close()
