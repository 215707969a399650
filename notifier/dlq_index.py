"""The dead-letter store's indexes and counters, kept in step with its documents.

Issue 16: no command may read every entry to answer. Beside each entry's
document and the time index (``notifier:dlq:index``), the store keeps:

* ``notifier:dlq:facets``, a hash: entry id → its facets (status, channel,
  event type, error fingerprint), what a removal must un-count;
* ``notifier:dlq:counts``, a hash of counters (``status:failed`` → n,
  ``channel:email``, ``type:booking.created``, ``fingerprint:<fp>``, and per
  fingerprint ``fps:<fp>:<status>`` / ``fpc:<fp>:<channel>`` for
  ``notifier stats``), so ``dlq stats`` costs one HGETALL;
* ``notifier:dlq:by:<facet>:<value>``, one sorted set per status, channel,
  type and fingerprint, scored like the index, so a filter pages through its
  own index instead of scanning.

Every write, removal and take changes the document, the indexes and the
counters in one Lua script, so counts stay right under concurrent writers,
removers and replays (and a take is still won by exactly one caller). The
scripts build the secondary keys from a prefix: Redis Cluster is not
supported anyway (docs/DESIGN.md §6), and a key per value cannot be declared
in advance.

A store written before these keys existed (or a document planted by hand)
has entries without facets: ``reindex`` adds what is missing, one bounded
batch at a time, and the CLI runs it on its own when it finds the index
longer than the facets (docs/operations.md, "Dead letters").
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import unquote_to_bytes

import redis

from notifier import keys

if TYPE_CHECKING:
    from notifier.deadletter import Entry

__all__ = [
    "FACET_NAMES",
    "Facets",
    "IndexScripts",
    "Progress",
    "batches",
    "by_key",
    "counts_from_hash",
    "escape",
    "scan_descending",
    "score_bound",
]

FACET_NAMES = ("status", "channel", "type", "fingerprint")
"""The facets an entry is counted and indexed by, in the order its record holds them."""

_SEPARATOR = b"\x1f"

_T = TypeVar("_T")

# Shared by the scripts: index (delta 1) or un-index (delta -1) one entry's facets.
_APPLY = r"""
local function apply(record, member, score, prefix, counts, delta)
  local parts = {}
  for part in string.gmatch(record .. '\31', '([^\31]*)\31') do
    parts[#parts + 1] = part
  end
  local names = {'status', 'channel', 'type', 'fingerprint'}
  local fields = {}
  for i = 1, 4 do
    local value = parts[i] or ''
    fields[#fields + 1] = names[i] .. ':' .. value
    if value ~= '' then
      local key = prefix .. names[i] .. ':' .. value
      if delta > 0 then
        redis.call('ZADD', key, score, member)
      else
        redis.call('ZREM', key, member)
      end
    end
  end
  local fp = parts[4] or ''
  fields[#fields + 1] = 'fps:' .. fp .. ':' .. (parts[1] or '')
  fields[#fields + 1] = 'fpc:' .. fp .. ':' .. (parts[2] or '')
  for _, field in ipairs(fields) do
    if redis.call('HINCRBY', counts, field, delta) <= 0 then
      redis.call('HDEL', counts, field)
    end
  end
end
"""

# KEYS: document, index, facets, counts. ARGV: member, document, score, record, prefix.
_WRITE = (
    _APPLY
    + r"""
local old = redis.call('HGET', KEYS[3], ARGV[1])
if old then
  apply(old, ARGV[1], 0, ARGV[5], KEYS[4], -1)
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
apply(ARGV[4], ARGV[1], ARGV[3], ARGV[5], KEYS[4], 1)
return 1
"""
)

# KEYS: index, facets, counts. ARGV: by-prefix, entry prefix, then members.
# Returns how many documents existed.
_REMOVE = (
    _APPLY
    + r"""
local removed = 0
for i = 3, #ARGV do
  local member = ARGV[i]
  local old = redis.call('HGET', KEYS[2], member)
  if old then
    apply(old, member, 0, ARGV[1], KEYS[3], -1)
    redis.call('HDEL', KEYS[2], member)
  end
  redis.call('ZREM', KEYS[1], member)
  removed = removed + redis.call('DEL', ARGV[2] .. member)
end
return removed
"""
)

# As _REMOVE, but only what this call takes out of the index (ZREM answers 1 to
# one caller), returning each taken document (false: another caller had it).
_TAKE = (
    _APPLY
    + r"""
local taken = {}
for i = 3, #ARGV do
  local member = ARGV[i]
  local document = false
  if redis.call('ZREM', KEYS[1], member) == 1 then
    document = redis.call('GET', ARGV[2] .. member)
    local old = redis.call('HGET', KEYS[2], member)
    if old then
      apply(old, member, 0, ARGV[1], KEYS[3], -1)
      redis.call('HDEL', KEYS[2], member)
    end
    redis.call('DEL', ARGV[2] .. member)
  end
  taken[#taken + 1] = document
end
return taken
"""
)

# KEYS: index, facets, counts. ARGV: by-prefix, entry prefix, then member/record pairs.
# Indexes entries that have a document and no facets yet; drops index members
# without a document (nothing to show, replay or purge). Returns {indexed, dropped}.
_REINDEX = (
    _APPLY
    + r"""
local indexed, dropped = 0, 0
for i = 3, #ARGV, 2 do
  local member, record = ARGV[i], ARGV[i + 1]
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score and redis.call('HEXISTS', KEYS[2], member) == 0 then
    if redis.call('EXISTS', ARGV[2] .. member) == 1 then
      redis.call('HSET', KEYS[2], member, record)
      apply(record, member, score, ARGV[1], KEYS[3], 1)
      indexed = indexed + 1
    else
      redis.call('ZREM', KEYS[1], member)
      dropped = dropped + 1
    end
  end
end
return {indexed, dropped}
"""
)


def escape(text: str) -> bytes:
    """``text`` as key-safe bytes: ``%``, the separator and control bytes %-escaped."""
    raw = text.encode("utf-8", "surrogateescape")
    if raw.isascii() and text.isprintable() and "%" not in text:
        return raw
    out = bytearray()
    for byte in raw:
        if byte < 0x20 or byte == 0x7F or byte == 0x25:
            out += b"%%%02X" % byte
        else:
            out.append(byte)
    return bytes(out)


def _unescape(raw: bytes) -> str:
    return unquote_to_bytes(raw).decode("utf-8", "surrogateescape")


def by_key(facet: str, value: str) -> bytes:
    """The secondary index of one facet value, e.g. ``notifier:dlq:by:status:failed``."""
    return keys.DLQ_BY_PREFIX.encode() + facet.encode() + b":" + escape(value)


@dataclass(frozen=True, slots=True)
class Facets:
    """What an entry is counted and indexed by. None: the entry does not say."""

    status: str
    channel: str | None
    event_type: str | None
    fingerprint: str

    @classmethod
    def of(cls, entry: Entry) -> Facets:
        """The facets of an entry (a corrupt one's status is ``corrupt``)."""
        return cls(entry.status, entry.channel, entry.event_type, entry.fingerprint)

    def record(self) -> bytes:
        """The stored form, as the scripts read it."""
        parts = (self.status, self.channel or "", self.event_type or "", self.fingerprint)
        return _SEPARATOR.join(escape(part) for part in parts)

    @staticmethod
    def from_record(raw: bytes) -> Facets:
        """Read a stored record back (memoised: a scan meets the same few records again and
        again, as entries share a status, channel, type and error shape)."""
        return _decode_record(raw)

    def value(self, facet: str) -> str | None:
        """This entry's value of ``facet`` (one of ``FACET_NAMES``)."""
        return {
            "status": self.status,
            "channel": self.channel,
            "type": self.event_type,
            "fingerprint": self.fingerprint,
        }[facet]


@functools.lru_cache(maxsize=8192)
def _decode_record(raw: bytes) -> Facets:
    parts = [_unescape(part) for part in raw.split(_SEPARATOR)]
    parts += [""] * (4 - len(parts))
    return Facets(parts[0], parts[1] or None, parts[2] or None, parts[3])


class IndexScripts:
    """The Lua scripts that change documents, indexes and counters together."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._write = client.register_script(_WRITE)
        self._remove = client.register_script(_REMOVE)
        self._take = client.register_script(_TAKE)
        self._reindex = client.register_script(_REINDEX)
        self._prefix = keys.DLQ_BY_PREFIX.encode()
        self._entry_prefix = keys.dlq_entry("").encode()

    def write(
        self,
        member: bytes,
        document: bytes,
        score: float,
        facets: Facets,
        client: redis.Redis | Any | None = None,
    ) -> None:
        """Store a document with its index entries and counts (``client``: a pipeline)."""
        self._write(
            keys=[self._entry_prefix + member, keys.DLQ_INDEX, keys.DLQ_FACETS, keys.DLQ_COUNTS],
            args=[member, document, repr(score), facets.record(), self._prefix],
            client=client or self._redis,
        )

    def remove(self, members: Sequence[bytes]) -> int:
        """Delete entries, their index entries and their counts; how many existed."""
        if not members:
            return 0
        return int(
            self._remove(
                keys=[keys.DLQ_INDEX, keys.DLQ_FACETS, keys.DLQ_COUNTS],
                args=[self._prefix, self._entry_prefix, *members],
            )
        )

    def take(self, members: Sequence[bytes]) -> list[bytes | None]:
        """Remove the entries this caller wins; their documents (None: not won)."""
        if not members:
            return []
        taken = self._take(
            keys=[keys.DLQ_INDEX, keys.DLQ_FACETS, keys.DLQ_COUNTS],
            args=[self._prefix, self._entry_prefix, *members],
        )
        return [document if isinstance(document, bytes) else None for document in taken]

    def reindex(self, records: Sequence[tuple[bytes, bytes]]) -> tuple[int, int]:
        """Index entries that have no facets yet: (indexed, dropped dangling members)."""
        if not records:
            return 0, 0
        args: list[bytes] = [self._prefix, self._entry_prefix]
        for member, record in records:
            args += [member, record]
        indexed, dropped = self._reindex(
            keys=[keys.DLQ_INDEX, keys.DLQ_FACETS, keys.DLQ_COUNTS], args=args
        )
        return int(indexed), int(dropped)


def counts_from_hash(raw: dict[bytes, bytes]) -> dict[str, dict[str, int]]:
    """The counters hash, grouped: ``{"status": {"failed": 3}, "fps": {fp: {...}}, …}``.

    Per-fingerprint fields come back as ``fps``/``fpc`` → fingerprint → value → n.
    """
    grouped: dict[str, Any] = {name: {} for name in (*FACET_NAMES, "fps", "fpc", "removed")}
    for field, value in raw.items():
        name, _, rest = field.partition(b":")
        group = name.decode("ascii", "replace")
        if group not in grouped:
            continue
        count = int(value)
        if group in ("fps", "fpc"):
            fingerprint, _, facet_value = rest.rpartition(b":")
            per = grouped[group].setdefault(_unescape(fingerprint), {})
            per[_unescape(facet_value)] = count
        else:
            grouped[group][_unescape(rest)] = count
    return cast("dict[str, dict[str, Any]]", grouped)


def scan_descending(
    client: redis.Redis,
    key: bytes | str,
    low: float = -math.inf,
    high: float = math.inf,
    chunk: int = 1000,
) -> Iterator[list[tuple[bytes, float]]]:
    """Members of a sorted set scored in [low, high], highest first, ``chunk`` at a time.

    A cursor on the score (not the rank), so entries removed as the scan goes
    (a replay taking them) shift nothing; members tied on the cursor's score
    are remembered so none is seen twice. Memory: one chunk.
    """
    top = high
    seen_at_top: set[bytes] = set()
    while True:
        wanted = chunk + len(seen_at_top)
        rows = cast(
            "list[tuple[bytes, float]]",
            client.zrevrangebyscore(
                key, score_bound(top), score_bound(low), start=0, num=wanted, withscores=True
            ),
        )
        fresh = [
            (member, score) for member, score in rows if not _seen(member, score, top, seen_at_top)
        ]
        if fresh:
            yield fresh
            last = fresh[-1][1]
            if last != top:
                top, seen_at_top = last, set()
            seen_at_top.update(member for member, score in fresh if score == top)
        if len(rows) < wanted or not fresh:
            return


def _seen(member: bytes, score: float, top: float, seen: set[bytes]) -> bool:
    return score == top and member in seen


def score_bound(value: float) -> str:
    """A score as ZRANGEBYSCORE takes it (``+inf``/``-inf``, or exact)."""
    if value == math.inf:
        return "+inf"
    if value == -math.inf:
        return "-inf"
    return repr(value)


Progress = Callable[[int, int], None]
"""Told (done, of) as a long operation goes."""


def batches(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """``items`` in lists of ``size`` (the last one shorter), read as they come."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
