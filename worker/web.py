"""HTTP endpoints (FastAPI).  For now: health; responses and ingestion come next."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from worker.runtime import Runtime


def create_app(rt: Runtime) -> FastAPI:
    app = FastAPI(title="retention worker", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        checks: dict[str, Any] = {}
        healthy = True
        try:
            with rt.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported in the response
            checks["database"] = f"error: {type(exc).__name__}"
            healthy = False
        checks["rules"] = {"loaded_at": rt.state.loaded_at.isoformat(),
                           "campaigns": len(rt.rules.campaigns), "error": rt.state.error}
        if rt.state.error:
            healthy = False
        return JSONResponse({"status": "ok" if healthy else "unhealthy", **checks},
                            status_code=200 if healthy else 503)

    return app
