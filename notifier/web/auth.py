"""The Bearer key of ``/v1/*`` (docs/DESIGN.md §10, "web auth"), as a FastAPI dependency.

No ``NOTIFIER_API_KEY`` set: 503 "API key not configured", on loopback too (an
unset key never means "open"). A missing or wrong key: 401 with
``WWW-Authenticate: Bearer``. The comparison is ``hmac.compare_digest`` on
bytes, so its time does not depend on how much of the key a guess got right
(docs/security.md).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

__all__ = ["API_KEY_NOT_CONFIGURED", "key_matches", "require_api_key"]

API_KEY_NOT_CONFIGURED = "API key not configured"

# auto_error=False: the answers are ours (503 before 401), and the scheme still
# appears in /openapi.json, so clients and schemathesis know to send the header.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <NOTIFIER_API_KEY>`")


def key_matches(given: str, expected: SecretStr) -> bool:
    """Whether ``given`` is the key, compared in constant time."""
    return hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


def require_api_key(api_key: SecretStr | None) -> Callable[..., None]:
    """A dependency that lets a request through only with ``Authorization: Bearer <api_key>``."""

    def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if api_key is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, API_KEY_NOT_CONFIGURED)
        if credentials is None or not key_matches(credentials.credentials, api_key):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or wrong API key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
