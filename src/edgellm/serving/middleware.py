"""ASGI middleware around the API: the API-key check and one structured (JSON) log line per request.

``LogAndAuth(app, api_key)`` wraps the FastAPI app that ``app.create_app`` builds. Deliberately absent: rate
limiting (the engine's bounded queue answers 429) and anything that reads or buffers the body.
"""

from __future__ import annotations

import hmac
import json
import logging
import time

from .schemas import error_body

log = logging.getLogger("edgellm.serving")


class LogAndAuth:
    """ASGI middleware: the API-key check (401) on ``/v1/*``, and one JSON log line per request, written
    when the response is complete (so a streamed answer logs its token counts). A plain ASGI wrapper,
    not ``BaseHTTPMiddleware``, so client disconnects still reach the endpoints."""

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]
        state = scope.setdefault("state", {})
        state["fields"] = {}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.api_key and scope["path"].startswith("/v1/") and not self._authorized(scope):
                body = json.dumps(error_body("invalid or missing API key: send 'Authorization: Bearer <key>'",
                                             code="invalid_api_key")).encode()
                await send_status({"type": "http.response.start", "status": 401,
                                   "headers": [(b"content-type", b"application/json"),
                                               (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                state["error"] = "invalid or missing API key"
                return
            await self.app(scope, receive, send_status)
        finally:
            record = {"event": "request", "method": scope.get("method"), "path": scope["path"], "status": status[0],
                      "ms": round(1000 * (time.perf_counter() - t0), 1), **state.get("fields", {})}
            if state.get("error"):
                record["error"] = state["error"]
            log.info(json.dumps(record))

    def _authorized(self, scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        return hmac.compare_digest(given.encode(), self.api_key.encode())
