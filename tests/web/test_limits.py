"""The body cap as an ASGI middleware, below any server: it counts bytes, not headers."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from notifier.web.limits import MAX_BODY_BYTES, BodyLimit


async def reading_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, then answers 200 with its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def call(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, list[Message]]:
    """Run one request through BodyLimit(reading_app); the status and every message sent."""
    incoming = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    asyncio.run(BodyLimit(reading_app)(scope, receive, send))
    return int(sent[0]["status"]), sent


def test_a_body_larger_than_its_content_length_says_is_still_cut_at_the_cap() -> None:
    # As if a server passed on more than the header declared: the count decides.
    status, _ = call([(b"content-length", b"10")], [b"x" * 8192] * 3)
    assert status == 413


def test_a_streamed_body_without_content_length_is_cut_at_the_cap() -> None:
    status, sent = call([], [b"x" * 4096] * 5)
    assert status == 413
    assert b"16384" in sent[-1]["body"]


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    status, _ = call([(b"content-length", str(MAX_BODY_BYTES + 1).encode())], [])
    assert status == 413


def test_a_body_of_exactly_the_cap_passes() -> None:
    status, sent = call([], [b"x" * 8192, b"x" * 8192])
    assert status == 200
    assert sent[-1]["body"] == str(MAX_BODY_BYTES).encode()
