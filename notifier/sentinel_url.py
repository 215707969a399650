"""``REDIS_URL=sentinel://…``: a Redis behind Sentinels, as kombu spells it.

The form is kombu's: one ``sentinel://host:port`` per Sentinel, joined by
``;``, the database as a path and the Redis password as user info::

    sentinel://:secret@10.0.0.1:26379;sentinel://10.0.0.2:26379;sentinel://10.0.0.3:26379/0

Which master to ask the Sentinels for is ``NOTIFIER_REDIS_MASTER_NAME``
(default ``mymaster``, docs/DESIGN.md §9). The user info (``user:password@``)
authenticates to the Redis master, as in kombu; Sentinels that have a
password of their own get it from the query, ``?sentinel_password=…`` (and
``sentinel_username=…``), which kombu's URL has no place for (it is passed to
kombu as the ``sentinel_kwargs`` transport option instead).

kombu reads the database and the password from the *first* part only, so
``sentinel://a;sentinel://b/3`` would put the broker on database 0 and the
stores on 3. Here the database, the credentials and the options may be
written on any part (or on several, identically); ``broker_url`` writes them
on every part, so kombu and the stores always agree. Errors never show the
URL: it may carry a password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pydantic import SecretStr

__all__ = [
    "DEFAULT_MASTER_NAME",
    "DEFAULT_SENTINEL_PORT",
    "SentinelUrl",
    "is_sentinel_url",
]

DEFAULT_MASTER_NAME = "mymaster"
"""``NOTIFIER_REDIS_MASTER_NAME`` by default: Sentinel's own example name."""

DEFAULT_SENTINEL_PORT = 26379

SCHEME = "sentinel"
_OPTIONS = ("sentinel_password", "sentinel_username")


def is_sentinel_url(url: str) -> bool:
    """Whether ``REDIS_URL`` names Sentinels rather than one Redis server."""
    return url.strip().lower().startswith(f"{SCHEME}://")


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """The parts of a ``sentinel://`` URL; secrets as ``SecretStr``."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: SecretStr | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        """Parse kombu's ``sentinel://h:p;sentinel://h2:p2/db`` form.

        Raises ``ValueError`` naming what is wrong, never a part of the URL.
        """
        sentinels: list[tuple[str, int]] = []
        found: dict[str, set[str]] = {}
        parts = [part.strip() for part in url.split(";")]
        for position, part in enumerate(parts, start=1):
            where = f"sentinel {position} of {len(parts)}"
            try:
                split = urlsplit(part)
                port = split.port
            except ValueError:
                raise ValueError(f"{where}: not a valid URL (host or port)") from None
            if split.scheme.lower() != SCHEME:
                raise ValueError(f"{where}: every part must start with sentinel://")
            if not split.hostname:
                raise ValueError(f"{where}: no host")
            if split.fragment:
                raise ValueError(f"{where}: a URL fragment (#…) is not allowed")
            sentinels.append((split.hostname, port or DEFAULT_SENTINEL_PORT))
            path = split.path.strip("/")
            if path:
                found.setdefault("database", set()).add(path)
            if split.username:
                found.setdefault("username", set()).add(unquote(split.username))
            if split.password is not None:
                found.setdefault("password", set()).add(unquote(split.password))
            for name, value in parse_qsl(split.query, keep_blank_values=True):
                if name not in _OPTIONS:
                    raise ValueError(f"{where}: unknown option (allowed: {', '.join(_OPTIONS)})")
                found.setdefault(name, set()).add(value)
        for name, values in found.items():
            if len(values) > 1:
                raise ValueError(f"the sentinel parts give different values for the {name}")
        given = {name: next(iter(values)) for name, values in found.items()}
        database = given.get("database", "0")
        if not database.isdigit():
            raise ValueError("the database (the path after the last sentinel) must be a number")
        password = given.get("password")
        sentinel_password = given.get("sentinel_password")
        return cls(
            sentinels=tuple(sentinels),
            db=int(database),
            username=given.get("username") or None,
            password=SecretStr(password) if password else None,
            sentinel_username=given.get("sentinel_username") or None,
            sentinel_password=SecretStr(sentinel_password) if sentinel_password else None,
        )

    def broker_url(self) -> str:
        """The URL for kombu: database and credentials on every part (kombu reads the first)."""
        userinfo = ""
        if self.username or self.password:
            secret = self.password.get_secret_value() if self.password else ""
            userinfo = f"{quote(self.username or '', safe='')}:{quote(secret, safe='')}@"
        return ";".join(
            f"{SCHEME}://{userinfo}{_netloc(host, port)}/{self.db}" for host, port in self.sentinels
        )

    def sentinel_kwargs(self) -> dict[str, str]:
        """Credentials for the Sentinels themselves (none unless given in the query)."""
        credentials: dict[str, str] = {}
        if self.sentinel_username:
            credentials["username"] = self.sentinel_username
        if self.sentinel_password:
            credentials["password"] = self.sentinel_password.get_secret_value()
        return credentials

    def describe(self, master_name: str) -> str:
        """``master 'mymaster' via h1:26379,h2:26379/0``: no user, no password."""
        via = ",".join(_netloc(host, port) for host, port in self.sentinels)
        return f"master {master_name!r} via sentinels {via}/{self.db}"


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
