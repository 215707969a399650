"""The console's routes (``console_router``): thin handlers over the plain functions.

Every page needs a session (``notifier.web.console.session``); without one a
page redirects to the login form, and without ``NOTIFIER_API_KEY`` every page
answers 503 "API key not configured" (docs/DESIGN.md §10, "web auth"). Every
POST carries the session's CSRF token (403 without it). Every response, errors
and redirects included, carries the security headers of
``notifier.web.console.rendering``. The routes stay out of ``/openapi.json``:
they are pages, not the API.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the handlers'
# ``Annotated[..., Depends(...)]`` parameters, built in ``console_router``'s scope.

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute

from notifier.console_bulk import Action, filter_record
from notifier.deadletter import CorruptEntry, Entry, Filter
from notifier.errors import NotifierError
from notifier.web.console import session as sessions
from notifier.web.console.chart import outcome_chart
from notifier.web.console.forms import (
    MAX_LIMIT,
    Form,
    filter_of,
    filter_query,
    paging_of,
    parse_form,
)
from notifier.web.console.groups import fingerprint_groups
from notifier.web.console.ports import ConsolePorts
from notifier.web.console.rendering import SECURITY_HEADERS, TEMPLATES, Pages

__all__ = ["API_KEY_NOT_CONFIGURED", "console_router"]

API_KEY_NOT_CONFIGURED = "API key not configured"

_STYLESHEET = (TEMPLATES.parent / "static" / "console.css").read_text()
_ACTIONS: tuple[Action, ...] = ("replay", "purge")


@dataclass(frozen=True, slots=True)
class Visit:
    """A signed-in request: the signing key, the session and its CSRF token."""

    key: bytes
    session: sessions.Session
    csrf: str


def _route_class(pages: Pages) -> type[APIRoute]:
    class ConsoleRoute(APIRoute):
        """Errors as pages, redirects as redirects, and the security headers on all."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                response: Response
                try:
                    response = await handler(request)
                except HTTPException as exc:
                    if exc.status_code == status.HTTP_303_SEE_OTHER and exc.headers:
                        response = RedirectResponse(exc.headers["Location"], exc.status_code)
                    else:
                        response = pages.error(exc.status_code, str(exc.detail))
                except redis.RedisError:
                    response = pages.error(503, "Redis unavailable: try again shortly")
                except NotifierError as exc:
                    # A publish the broker refused (a bulk action's task): nothing started.
                    response = pages.error(503, f"not handed to the workers: {exc}")
                response.headers.update(SECURITY_HEADERS)
                return response

            return guarded

    return ConsoleRoute


def _action(value: str) -> Action:
    for action in _ACTIONS:
        if value == action:
            return action
    raise HTTPException(status.HTTP_400_BAD_REQUEST, "unknown action")


def console_router(ports: ConsolePorts, prefix: str = "/console") -> APIRouter:
    """The console's routes under ``prefix``, over these parts."""
    pages = Pages(prefix)
    router = APIRouter(prefix=prefix, route_class=_route_class(pages), include_in_schema=False)

    def api_key() -> str:
        if ports.api_key is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, API_KEY_NOT_CONFIGURED)
        return ports.api_key.get_secret_value()

    def signing_key() -> bytes:
        return sessions.signing_key(api_key())

    def visit(request: Request) -> Visit:
        key = signing_key()
        found = sessions.read(key, request.cookies.get(sessions.SESSION_COOKIE), ports.clock())
        if found is None:
            raise HTTPException(
                status.HTTP_303_SEE_OTHER, "sign in", headers={"Location": f"{prefix}/login"}
            )
        return Visit(key, found, sessions.csrf_token(key, found.id))

    async def posted(request: Request, current: Annotated[Visit, Depends(visit)]) -> Form:
        form = await _read_form(request)
        token = form.first("csrf") or None
        if not sessions.csrf_matches(current.key, current.session.id, token):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
        return form

    def secure(request: Request) -> bool:
        return request.url.scheme == "https" or (ports.public_url or "").startswith("https://")

    def set_cookie(response: Response, request: Request, name: str, value: str, age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=age,
            path=prefix,
            secure=secure(request),
            httponly=True,
            samesite="strict",
        )

    Signed = Annotated[Visit, Depends(visit)]
    Posted = Annotated[Form, Depends(posted)]

    @router.get("/static/console.css")
    def stylesheet() -> Response:
        return Response(_STYLESHEET, media_type="text/css")

    def login_form(request: Request, error: str | None, code: int) -> Response:
        key = signing_key()
        nonce = request.cookies.get(sessions.LOGIN_COOKIE) or sessions.login_nonce()
        response = pages.render(
            "login.html",
            code,
            login_csrf=sessions.csrf_token(key, nonce),
            error=error,
        )
        set_cookie(response, request, sessions.LOGIN_COOKIE, nonce, 600)
        return response

    @router.get("/login")
    def login_page(request: Request) -> Response:
        return login_form(request, None, 200)

    @router.post("/login")
    async def login(request: Request) -> Response:
        key = signing_key()
        form = await _read_form(request)
        nonce = request.cookies.get(sessions.LOGIN_COOKIE)
        if not nonce or not sessions.csrf_matches(key, nonce, form.first("csrf") or None):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
        if not sessions.key_matches(form.first("api_key"), api_key()):
            return login_form(request, "That is not the API key.", status.HTTP_401_UNAUTHORIZED)
        _, cookie = sessions.issue(key, ports.clock())
        response = RedirectResponse(f"{prefix}/", status.HTTP_303_SEE_OTHER)
        lifetime = int(sessions.SESSION_LIFETIME.total_seconds())
        set_cookie(response, request, sessions.SESSION_COOKIE, cookie, lifetime)
        response.delete_cookie(sessions.LOGIN_COOKIE, path=prefix)
        return response

    @router.post("/logout")
    def logout(_: Posted) -> Response:
        response = RedirectResponse(f"{prefix}/login", status.HTTP_303_SEE_OTHER)
        response.delete_cookie(sessions.SESSION_COOKIE, path=prefix)
        return response

    @router.get("/")
    def overview(current: Signed) -> Response:
        now = ports.clock()
        total, groups = fingerprint_groups(ports.dead_letters, limit=10)
        return pages.render(
            "overview.html",
            csrf=current.csrf,
            queues=ports.queue_lengths(),
            chart=outcome_chart(ports.outcomes(now)),
            total=total,
            groups=groups,
        )

    @router.get("/dead-letters")
    def dead_letters(request: Request, current: Signed) -> Response:
        values = dict(request.query_params)
        paging = paging_of(values)
        try:
            where = filter_of(values, ports.clock())
        except ValueError as exc:
            return pages.render(
                "dead_letters.html",
                400,
                csrf=current.csrf,
                values=values,
                problem=str(exc),
                entries=[],
                total=0,
                paging=paging,
                groups=[],
                links={},
                resolved={},
            )
        page = ports.dead_letters.page(where, paging.offset, paging.limit)
        _, groups = fingerprint_groups(ports.dead_letters, limit=20)
        links = {}
        if paging.offset > 0:
            links["previous"] = filter_query(
                values, offset=max(paging.offset - paging.limit, 0), limit=paging.limit
            )
        if paging.offset + paging.limit < page.total:
            links["next"] = filter_query(
                values, offset=paging.offset + paging.limit, limit=paging.limit
            )
        return pages.render(
            "dead_letters.html",
            csrf=current.csrf,
            values=values,
            problem=None,
            entries=page.entries,
            total=page.total,
            paging=paging,
            groups=groups,
            links=links,
            # Relative times ("2h") resolved now, so a bulk action means what was shown.
            resolved=filter_record(where),
        )

    @router.post("/dead-letters/confirm")
    def confirm_selection(current: Signed, form: Posted) -> Response:
        action = _action(form.first("action"))
        entries = _selected(form)
        return pages.render(
            "confirm.html",
            csrf=current.csrf,
            action=action,
            entries=entries,
            back=_back(form),
        )

    @router.post("/dead-letters/apply")
    def apply_selection(current: Signed, form: Posted) -> Response:
        action = _action(form.first("action"))
        if form.first("confirmed") != "yes":
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "not confirmed")
        entries = _selected(form)
        results: list[tuple[str, str, bool]] = []
        if action == "replay":
            for result in ports.dead_letters.replay_stream(entries, ports.replay, chunk=MAX_LIMIT):
                ok = result.error is None
                results.append((result.entry_id, result.done or result.error or "", ok))
        else:
            purged = ports.dead_letters.purge(entries)
            results = [(entry.id, "purged", True) for entry in entries][:purged]
        return pages.render(
            "results.html",
            csrf=current.csrf,
            action=action,
            results=results,
            back=_back(form),
        )

    def _back(form: Form) -> str:
        # Only a page of this console: a posted link is never followed elsewhere.
        back = form.first("back")
        return back if back.startswith(f"{prefix}/") and "//" not in back else ""

    def _selected(form: Form) -> list[Entry]:
        ids = form.all("id")[:MAX_LIMIT]
        found = [ports.dead_letters.get(entry_id) for entry_id in ids]
        return [entry for entry in found if entry is not None]

    @router.post("/bulk/confirm")
    def confirm_bulk(current: Signed, form: Posted) -> Response:
        action = _action(form.first("action"))
        where = _posted_filter(form)
        total = ports.dead_letters.page(where, 0, 0).total
        return pages.render(
            "bulk_confirm.html",
            csrf=current.csrf,
            action=action,
            where=filter_record(where),
            total=total,
        )

    @router.post("/bulk")
    def start_bulk(current: Signed, form: Posted) -> Response:
        action = _action(form.first("action"))
        if form.first("confirmed") != "yes":
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "not confirmed")
        where = _posted_filter(form)
        total = int(form.first("total")) if form.first("total").isdigit() else 0
        job = ports.start_bulk(action, where, total)
        return RedirectResponse(f"{prefix}/bulk/{job.id}", status.HTTP_303_SEE_OTHER)

    def _posted_filter(form: Form) -> Filter:
        try:
            return filter_of(form.values(), ports.clock())
        except ValueError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None

    @router.get("/bulk/{job_id}")
    def bulk_progress(job_id: str, current: Signed) -> Response:
        job = ports.bulk_job(job_id) if job_id.isalnum() and len(job_id) <= 64 else None
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such bulk action (or it expired)")
        return pages.render("bulk.html", csrf=current.csrf, job=job)

    @router.get("/entries/{entry_id:path}")
    def entry(entry_id: str, current: Signed) -> Response:
        found = ports.dead_letters.get(entry_id)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such dead letter")
        trace = None
        if not isinstance(found, CorruptEntry) and found.event_id:
            trace = ports.status(found.event_id)
        return pages.render(
            "entry.html",
            csrf=current.csrf,
            entry=found,
            corrupt=isinstance(found, CorruptEntry),
            trace=trace,
        )

    @router.get("/trace")
    def trace(current: Signed, event_id: str = "") -> Response:
        event_id = event_id.strip()[:200]
        found = ports.status(event_id) if event_id else None
        code = status.HTTP_404_NOT_FOUND if event_id and found is None else status.HTTP_200_OK
        return pages.render("trace.html", code, csrf=current.csrf, event_id=event_id, trace=found)

    return router


async def _read_form(request: Request) -> Form:
    try:
        return parse_form(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "not a form") from None
