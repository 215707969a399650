"""The console's filters, paging and groups (notifier.web.console.forms, .groups)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import fakeredis
import pytest

from notifier.deadletter import DeadLetterStore, Filter
from notifier.events import parse_event
from notifier.planner import plan
from notifier.web.console.forms import Paging, filter_of, filter_query, paging_of, parse_form
from notifier.web.console.groups import fingerprint_groups
from tests import samples

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def test_the_filter_fields_read_as_the_cli_reads_them() -> None:
    where = filter_of(
        {"status": "failed", "type": " booking.created ", "since": "2h", "until": "2026-12-07"},
        NOW,
    )

    assert where == Filter(
        status="failed",
        event_type="booking.created",
        since=NOW - timedelta(hours=2),
        until=datetime(2026, 12, 7, tzinfo=UTC),
    )


def test_a_time_that_is_none_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="yesterday"):
        filter_of({"since": "yesterday"}, NOW)


def test_paging_clamps_the_limit_and_ignores_what_is_not_a_number() -> None:
    assert paging_of({"offset": "100", "limit": "5000"}) == Paging(100, 200)
    assert paging_of({"offset": "-3", "limit": "x"}).offset == 0
    assert paging_of({"limit": "0"}).limit == 1


def test_links_keep_the_filter_and_drop_empty_fields() -> None:
    query = filter_query({"status": "failed", "channel": "", "other": "x"}, offset=50)

    assert query == "status=failed&offset=50"


def test_a_form_keeps_every_checked_box_in_order() -> None:
    form = parse_form(b"csrf=t&id=b&id=a&id=&action=replay")

    assert form.all("id") == ["b", "a"]
    assert form.first("action") == "replay"
    assert form.first("missing") == ""


def test_the_largest_fingerprint_groups_come_first_and_filter_by_fingerprint() -> None:
    store = DeadLetterStore(fakeredis.FakeRedis())
    delivery = plan(parse_event(samples.booking_created()))[0]
    for number in range(5):
        store.add_delivery(
            delivery.model_copy(update={"delivery_id": f"a-{number}"}),
            status="failed",
            error=f"PermanentError: 550 mailbox {number} unknown",
            history=[],
        )
    store.add_delivery(
        delivery.model_copy(update={"delivery_id": "b"}),
        status="failed",
        error="TransientError: timed out",
        history=[],
    )

    total, groups = fingerprint_groups(store, limit=1)

    assert total == 6
    [largest] = groups
    assert largest.count == 5
    assert largest.by_status == {"failed": 5}
    assert largest.error.startswith("PermanentError: 550")
    assert store.page(Filter(fingerprint=largest.fingerprint)).total == 5
