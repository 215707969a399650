"""The FastAPI application of ``notifier web`` (docs/DESIGN.md §9), built from the parts it uses.

``create_app(parts)`` takes what the handlers need (settings, the status
store, the health probe, the receipt handler) so tests serve it with fakes.
Handlers are thin: each calls a plain function and turns its answer into
HTTP. The body cap (``notifier.web.limits``) wraps every route; the access
log is ours (``notifier.web.access``), with no query string and no header.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import redis
from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from notifier.errors import PublishError
from notifier.health import Check
from notifier.logs import get_logger
from notifier.receipts import TWILIO_STATUSES, TwilioReceipt
from notifier.settings import Settings
from notifier.status_store import EventStatus
from notifier.web.access import AccessLog
from notifier.web.auth import require_api_key
from notifier.web.console import ConsolePorts, console_router
from notifier.web.limits import BodyLimit
from notifier.web.twilio_callback import answer_callback

__all__ = ["EventLookup", "WebParts", "create_app"]


class EventLookup(Protocol):
    """Reads an event's status (``notifier.status_store.StatusStore`` in production)."""

    def event(self, event_id: str) -> EventStatus | None:
        """The event's trace shape; None for an unknown (or expired) id."""


@dataclass(frozen=True)
class WebParts:
    """What the web process's handlers use; ``notifier.web.server`` assembles the real ones."""

    settings: Settings
    status: EventLookup
    health: Callable[[], Sequence[Check]]
    """The checks behind /healthz (Redis: ``notifier.health.check_redis``)."""
    apply_receipt: Callable[[TwilioReceipt], object]
    """Records one validated Twilio receipt (``notifier.receipts``)."""
    console: ConsolePorts | None = None
    """The operators' console at ``/console/`` (``notifier.web.console``); None: not served."""


def _detail(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"detail": {"type": "string"}}}
            }
        },
    }


# Documented only: the handler reads the raw body itself, since the signature
# covers every field as sent (notifier/web/twilio_callback.py).
_TWILIO_FORM: dict[str, Any] = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "required": ["MessageSid", "MessageStatus"],
                "properties": {
                    "MessageSid": {"type": "string", "pattern": "^[SM]M[0-9a-fA-F]{32}$"},
                    "MessageStatus": {"type": "string", "enum": list(TWILIO_STATUSES)},
                    "ErrorCode": {"type": "string", "pattern": "^[0-9]{1,9}$"},
                },
            }
        }
    },
}


def create_app(parts: WebParts) -> FastAPI:
    """The ASGI application for these parts."""
    app = FastAPI(
        title="notifier",
        version="1",
        description="Status of notifications and Twilio's delivery receipts (docs/DESIGN.md §9).",
        docs_url=None,
        redoc_url=None,
    )
    # Added last = outermost: the access log sees the body cap's 413s too.
    app.add_middleware(BodyLimit)
    app.add_middleware(AccessLog)

    @app.exception_handler(redis.RedisError)
    async def redis_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        get_logger().error("web.redis_error", error=f"{type(exc).__name__}: {exc}")
        return JSONResponse({"detail": "Redis unavailable"}, status.HTTP_503_SERVICE_UNAVAILABLE)

    @app.exception_handler(PublishError)
    async def not_now(_: Request, exc: PublishError) -> JSONResponse:
        # A receipt's follow-up the broker refused (PublishError): a 5xx, so a
        # retried callback can take it up again (notifier/receipts.py).
        get_logger().error("web.request_failed", error=f"{type(exc).__name__}: {exc}")
        return JSONResponse({"detail": "try again later"}, status.HTTP_503_SERVICE_UNAVAILABLE)

    authorized = Depends(require_api_key(parts.settings.notifier_api_key))

    @app.get(
        "/healthz",
        responses={
            200: {"description": '`{"status": "ok"}`'},
            503: {"description": "The failing checks"},
        },
    )
    def healthz() -> JSONResponse:
        """Can this process answer? (Redis reachable and not full.) No auth."""
        failing = [check for check in parts.health() if check.status == "fail"]
        if not failing:
            return JSONResponse({"status": "ok"})
        checks = [{"name": check.name, "detail": check.detail} for check in failing]
        return JSONResponse({"status": "fail", "checks": checks}, 503)

    @app.get(
        "/v1/events/{event_id}",
        response_model=EventStatus,
        dependencies=[authorized],
        responses={
            401: _detail("Missing or wrong API key"),
            404: _detail("Unknown event id"),
            503: _detail("API key not configured, or Redis unavailable"),
        },
    )
    def event_status(event_id: Annotated[str, Path(min_length=1, max_length=200)]) -> EventStatus:
        """What became of an event and each of its deliveries (``notifier trace``'s shape)."""
        found = parts.status.event(event_id)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "unknown event id")
        return found

    @app.post(
        "/twilio/status",
        openapi_extra={"requestBody": _TWILIO_FORM},
        responses={
            200: {"description": "Taken (an unknown MessageSid too)"},
            400: {"description": "Not a status callback"},
            403: {"description": "Invalid X-Twilio-Signature"},
            404: {"description": "Receipts are off (no NOTIFIER_PUBLIC_URL)"},
            413: {"description": "Body over 16 KiB"},
        },
    )
    async def twilio_status(request: Request) -> Response:
        """Twilio's status callback for an SMS, signed with ``X-Twilio-Signature``."""
        body = await request.body()  # over the cap: BodyLimit answers 413 first
        code, detail = await run_in_threadpool(
            answer_callback,
            parts.settings,
            body,
            request.headers.get("X-Twilio-Signature"),
            parts.apply_receipt,
        )
        return JSONResponse({"detail": detail}, code)

    if parts.console is not None:
        app.include_router(console_router(parts.console))
    return app
