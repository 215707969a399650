"""The status store's rules (docs/DESIGN.md §9, §10) and the pipeline's transitions (fakeredis)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from notifier import keys
from notifier.deadletter import DeadLetter
from notifier.errors import (
    AmbiguousDeliveryError,
    CircuitOpenError,
    PermanentError,
    TransientError,
)
from notifier.events import parse_event
from notifier.pipeline import Job, deliver, handle_event, parse_job, replay, task_failed
from notifier.planner import Delivery, plan
from notifier.runtime import Runtime
from notifier.status_store import MAX_DETAIL_CHARS, FinalState, StatusStore
from tests import samples
from tests.conftest import make_settings
from tests.unit.round_trips import CountingRedis
from tests.unit.test_pipeline import TWILIO, FakeSms, FakeSmtp, RecordingScheduler

TTL = 3600


class Clock:
    """An injected clock: each reading is one millisecond after the last."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@pytest.fixture(autouse=True)
def _lua() -> None:
    if importlib.util.find_spec("lupa") is None:
        pytest.fail("the status store runs Lua scripts: install the dev extra (fakeredis[lua])")


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    redis = fakeredis.FakeRedis()
    yield redis
    redis.close()


@pytest.fixture
def store(client: fakeredis.FakeRedis) -> StatusStore:
    return StatusStore(client, ttl=TTL, clock=Clock())


def _sms() -> Delivery:
    return next(d for d in plan(parse_event(samples.booking_created())) if d.channel == "sms")


def _email() -> Delivery:
    return next(d for d in plan(parse_event(samples.user_registered())) if d.channel == "email")


def _state(store: StatusStore, delivery: Delivery) -> str:
    found = store.for_delivery(delivery.delivery_id)
    assert found is not None
    return found.deliveries[0].state


def _queued_then_sent(store: StatusStore, sms: Delivery, sid: str = "SM1") -> None:
    store.write([store.transition_call(sms, "queued")])
    store.write(
        [
            store.transition_call(
                sms, "sent", provider="twilio", provider_id=sid, sent_final=False, sid=True
            )
        ]
    )


# --- precedence --------------------------------------------------------------------


def test_a_lower_rank_write_after_sent_joins_the_timeline_but_keeps_the_state(
    store: StatusStore,
) -> None:
    sms = _sms()
    _queued_then_sent(store, sms)

    store.write([store.transition_call(sms, "retrying", detail="late")])

    found = store.for_delivery(sms.delivery_id)
    assert found is not None
    assert found.deliveries[0].state == "sent"
    assert [e.state for e in found.deliveries[0].timeline] == ["queued", "sent", "retrying"]


def test_delivered_stays_delivered_when_a_late_sent_arrives(store: StatusStore) -> None:
    sms = _sms()
    _queued_then_sent(store, sms)
    store.receipt("SM1", "delivered", "")

    result = store.receipt("SM1", "sent", "")

    assert result.state == "delivered"
    assert _state(store, sms) == "delivered"


def test_the_first_final_receipt_wins(store: StatusStore) -> None:
    sms = _sms()
    _queued_then_sent(store, sms)
    store.receipt("SM1", "undelivered", "30003")

    result = store.receipt("SM1", "delivered", "")

    assert (result.state, result.became_final) == ("undelivered", False)
    assert _state(store, sms) == "undelivered"


def test_sent_is_final_for_an_email_and_not_for_an_sms_awaiting_its_receipt(
    store: StatusStore,
) -> None:
    email, sms = _email(), _sms()

    [email_reply] = store.write([store.transition_call(email, "sent", provider_id="1")])
    [sms_reply] = store.write([store.transition_call(sms, "sent", sent_final=False)])

    assert store.became_final(email_reply) is True
    assert store.became_final(sms_reply) is False


def test_became_final_is_true_once_under_repeated_and_out_of_order_receipts(
    store: StatusStore,
) -> None:
    sms = _sms()
    _queued_then_sent(store, sms)

    results = [
        store.receipt("SM1", state, "")
        for state in ("delivered", "sent", "delivered", "undelivered", "delivered")
    ]

    assert [r.became_final for r in results] == [True, False, False, False, False]
    assert {r.state for r in results} == {"delivered"}


def test_a_delivery_made_final_twice_reports_it_once(store: StatusStore) -> None:
    email = _email()

    first = store.write([store.transition_call(email, "failed", dead_letter_id="d1")])[0]
    again = store.write([store.transition_call(email, "sent", provider_id="1")])[0]

    assert (store.became_final(first), store.became_final(again)) == (True, False)


# --- receipts ----------------------------------------------------------------------


def test_a_receipt_for_an_unknown_sid_finds_no_delivery(store: StatusStore) -> None:
    result = store.receipt("SMunknown", "delivered", "")

    assert (result.delivery, result.state, result.became_final) == (None, None, False)


def test_a_receipt_returns_the_delivery_its_sid_belongs_to(store: StatusStore) -> None:
    sms = _sms()
    _queued_then_sent(store, sms, sid="SM42")

    result = store.receipt("SM42", "delivered", "")

    assert result.delivery == sms
    assert result.became_final is True


def test_dead_lettered_puts_the_id_on_a_recorded_delivery_only(store: StatusStore) -> None:
    sms = _sms()
    _queued_then_sent(store, sms)

    assert store.dead_lettered(sms.delivery_id, "dl-1") is True
    assert store.dead_lettered("nobody", "dl-2") is False
    found = store.for_delivery(sms.delivery_id)
    assert found is not None
    assert found.deliveries[0].dead_letter_id == "dl-1"


# --- the record's limits -----------------------------------------------------------


def test_the_timeline_keeps_its_first_entry_and_its_last_19(store: StatusStore) -> None:
    email = _email()
    for n in range(30):
        store.write([store.transition_call(email, "retrying", detail=f"try {n}")])

    found = store.for_delivery(email.delivery_id)
    assert found is not None
    details = [e.detail for e in found.deliveries[0].timeline]
    assert details == ["try 0"] + [f"try {n}" for n in range(11, 30)]


def test_a_detail_is_cut_to_500_characters(store: StatusStore) -> None:
    email = _email()

    store.write([store.transition_call(email, "retrying", detail="x" * 2000)])

    found = store.for_delivery(email.delivery_id)
    assert found is not None
    assert found.deliveries[0].timeline[0].detail == "x" * MAX_DETAIL_CHARS


def test_a_detail_is_stored_redacted_and_inert(store: StatusStore) -> None:
    email = _email()

    store.write([store.transition_call(email, "retrying", detail="to ada@example.com \x1b[2J")])

    found = store.for_delivery(email.delivery_id)
    assert found is not None
    assert found.deliveries[0].timeline[0].detail == "to a***@example.com \\u001b[2J"
    assert found.deliveries[0].recipient == "a***@example.com"


def test_every_status_key_expires_after_the_status_ttl(
    store: StatusStore, client: fakeredis.FakeRedis
) -> None:
    event = parse_event(samples.booking_created())
    planned = plan(event)
    store.write(
        [store.accept_call(str(event.event_id), event.type, [(d, "queued", "") for d in planned])]
    )
    sms = next(d for d in planned if d.channel == "sms")
    store.write([store.transition_call(sms, "sent", provider_id="SM9", sid=True)])
    store.next_resend_id(sms.delivery_id)
    store.reject("rejected-1", None, ["bad"], "dl-1")

    status_keys = [
        k.decode() if isinstance(k, bytes) else k for k in client.keys(keys.STATUS_PREFIX + "*")
    ]
    assert len(status_keys) == len(planned) + 4  # events ×2, sid, replays counter
    assert {k: 0 < client.ttl(k) <= TTL for k in status_keys} == dict.fromkeys(status_keys, True)


# --- reads -------------------------------------------------------------------------


def test_an_unknown_event_or_delivery_has_no_status(store: StatusStore) -> None:
    assert store.event("nope") is None
    assert store.for_delivery("nope") is None


def test_a_rejected_event_does_not_overwrite_an_accepted_one(store: StatusStore) -> None:
    event = parse_event(samples.user_registered())
    store.write([store.accept_call(str(event.event_id), event.type, [])])

    assert store.reject(str(event.event_id), "forged", ["bad"], "dl-1") is False

    found = store.event(str(event.event_id))
    assert found is not None
    assert found.state == "accepted"


# --- the cost rule -----------------------------------------------------------------

# Measured on 0492b33 (this branch's parent, f7c8f24-era pipeline) with this same
# harness: a one-email user.registered event makes 2 round trips once the scripts
# are loaded: the claim (EVALSHA) and the sent marker (SET).
ROUND_TRIPS_BEFORE_STATUS = 2


def test_a_one_email_event_costs_no_more_round_trips_than_before_the_status() -> None:
    client = CountingRedis()
    settings = make_settings(notifier_sms_mps=0)
    rt = dataclasses.replace(
        Runtime.from_settings(settings, RecordingScheduler(), client=client), smtp=FakeSmtp()
    )
    handle_event(samples.user_registered(), rt)  # loads the scripts
    client.restart()

    handle_event(samples.user_registered(), rt)

    assert client.round_trips == ROUND_TRIPS_BEFORE_STATUS, client.commands


# --- the pipeline's transitions ----------------------------------------------------


@dataclasses.dataclass
class Worker:
    rt: Runtime
    scheduler: RecordingScheduler
    smtp: FakeSmtp
    sms: FakeSms
    finals: list[FinalState]

    def run_scheduled(self) -> None:
        while self.scheduler.scheduled:
            job, _ = self.scheduler.scheduled.pop(0)
            deliver(job.model_dump(mode="json"), self.rt)

    def event(self, event_id: str) -> Any:
        found = self.rt.status.event(event_id)
        assert found is not None
        return found.model_dump(mode="json")


def _worker(clock: Any = None, **settings: Any) -> Worker:
    values: dict[str, Any] = {
        "notifier_sms_mps": 0,
        "notifier_retry_max_attempts": 3,
        "notifier_retry_backoff_base": 5.0,
        **settings,
    }
    scheduler, smtp, sms = RecordingScheduler(), FakeSmtp(), FakeSms()
    finals: list[FinalState] = []
    settings_ = make_settings(**values)
    production = Runtime.from_settings(
        settings_, scheduler, client=fakeredis.FakeRedis(), clock=clock or Clock()
    )
    rt = dataclasses.replace(
        production,
        smtp=smtp,
        sms_sender=sms if settings_.sms_enabled else None,
        on_final=finals.append,
    )
    return Worker(rt, scheduler, smtp, sms, finals)


def _states(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(d["channel"], d["state"]) for d in doc["deliveries"]]


def test_an_event_records_each_delivery_and_a_skipped_sms_says_why() -> None:
    w = _worker()
    event = samples.booking_created()

    handle_event(event, w.rt)

    doc = w.event(event["event_id"])
    assert (doc["type"], doc["state"]) == ("booking.created", "accepted")
    assert _states(doc) == [("email", "sent"), ("email", "sent"), ("sms", "skipped")]
    assert doc["deliveries"][2]["timeline"][0]["detail"] == "Twilio is not configured"
    assert [e["state"] for e in doc["deliveries"][0]["timeline"]] == ["queued", "sent"]


def test_an_sms_is_queued_then_sent_with_its_provider_id() -> None:
    w = _worker(**TWILIO)
    event = samples.booking_created()

    handle_event(event, w.rt)
    assert _states(w.event(event["event_id"]))[2] == ("sms", "queued")
    w.run_scheduled()

    sms = w.event(event["event_id"])["deliveries"][2]
    assert (sms["state"], sms["provider_id"], sms["attempts"]) == ("sent", "SM1", 1)
    assert sms["timeline"][-1]["detail"] == "accepted by fake-twilio"


def test_a_sent_emails_timeline_names_its_provider_not_its_message_id() -> None:
    # A Message-ID looks like an address: in the detail it would come out redacted,
    # unlike the same id in provider_id.
    w = _worker()
    event = samples.user_registered()

    handle_event(event, w.rt)

    (email,) = w.event(event["event_id"])["deliveries"]
    assert email["timeline"][-1]["detail"] == f"accepted by {email['provider']}"


def test_a_retry_is_recorded_retrying_with_its_error() -> None:
    w = _worker()
    w.smtp.failures.append(TransientError("421 try later"))
    event = samples.user_registered()

    handle_event(event, w.rt)

    [delivery] = w.event(event["event_id"])["deliveries"]
    assert delivery["state"] == "retrying"
    assert delivery["timeline"][-1]["detail"] == "TransientError: 421 try later"


def test_an_ambiguous_reply_is_retrying_with_a_detail_starting_ambiguous() -> None:
    w = _worker()
    w.smtp.failures.append(AmbiguousDeliveryError("no reply to the message"))
    event = samples.user_registered()

    handle_event(event, w.rt)

    [delivery] = w.event(event["event_id"])["deliveries"]
    assert delivery["state"] == "retrying"
    assert delivery["timeline"][-1]["detail"].startswith("ambiguous:")


def test_a_failed_sms_has_its_dead_letter_and_its_fallback_email_is_linked_queued() -> None:
    w = _worker(**TWILIO)
    w.sms.failures.append(PermanentError("21211 invalid number"))
    event = samples.booking_created()
    handle_event(event, w.rt)

    job, _ = w.scheduler.scheduled.pop(0)
    deliver(job.model_dump(mode="json"), w.rt)

    doc = w.event(event["event_id"])
    assert _states(doc) == [
        ("email", "sent"),
        ("email", "sent"),
        ("sms", "failed"),
        ("email", "queued"),
    ]
    assert doc["deliveries"][2]["dead_letter_id"] is not None
    w.run_scheduled()
    assert _states(w.event(event["event_id"]))[3] == ("email", "sent")


def test_an_email_held_in_an_outage_is_recorded_held() -> None:
    w = _worker()
    w.smtp.failures.append(CircuitOpenError("every provider is down"))
    event = samples.user_registered()

    handle_event(event, w.rt)

    [delivery] = w.event(event["event_id"])["deliveries"]
    assert delivery["state"] == "held"
    assert w.finals == []


def test_a_rate_limited_delivery_is_final_with_its_dead_letter() -> None:
    w = _worker()
    events = [samples.password_reset_requested() for _ in range(6)]
    for event in events:
        handle_event(event, w.rt)

    [delivery] = w.event(events[-1]["event_id"])["deliveries"]
    assert delivery["state"] == "rate_limited"
    assert delivery["dead_letter_id"] is not None
    assert w.finals[-1].state == "rate_limited"


def test_an_expired_reset_is_recorded_expired() -> None:
    event = samples.password_reset_requested()
    too_late = datetime.fromisoformat(event["occurred_at"]) + timedelta(hours=1, seconds=1)
    w = _worker(clock=lambda: too_late)

    handle_event(event, w.rt)

    [delivery] = w.event(event["event_id"])["deliveries"]
    assert (delivery["state"], delivery["attempts"]) == ("expired", 0)
    assert [e["state"] for e in delivery["timeline"]] == ["queued", "expired"]


def test_a_delivery_task_that_failed_is_recorded_failed() -> None:
    w = _worker(**TWILIO)
    event = samples.booking_created()
    handle_event(event, w.rt)
    job, _ = w.scheduler.scheduled.pop(0)

    task_failed("notifier.deliver", (job.model_dump(mode="json"),), {}, RuntimeError("boom"), w.rt)

    sms = w.event(event["event_id"])["deliveries"][2]
    assert sms["state"] == "failed"
    assert sms["timeline"][-1]["detail"] == "RuntimeError: boom"


def test_a_rejected_event_has_an_event_level_record_with_its_dead_letter() -> None:
    w = _worker()

    handle_event({"event_id": "evt-bad", "type": "no.such.type"}, w.rt)

    doc = w.event("evt-bad")
    assert (doc["state"], doc["deliveries"]) == ("rejected", [])
    assert doc["reasons"]
    assert doc["dead_letter_id"]
    assert [(f.delivery_id, f.state) for f in w.finals] == [(None, "rejected")]


def test_on_final_is_told_once_per_delivery_when_the_event_comes_again() -> None:
    w = _worker()
    event = samples.booking_created()

    handle_event(event, w.rt)
    handle_event(event, w.rt)

    assert sorted((f.channel, f.state) for f in w.finals) == [
        ("email", "sent"),
        ("email", "sent"),
        ("sms", "skipped"),
    ]


def test_a_duplicate_changes_no_state_and_adds_no_entry() -> None:
    w = _worker()
    event = samples.user_registered()
    handle_event(event, w.rt)
    before = w.event(event["event_id"])

    handle_event(event, w.rt)

    assert w.event(event["event_id"]) == before


def test_sms_sent_is_not_final_when_receipts_are_asked_for() -> None:
    w = _worker(notifier_public_url="https://notifier.example.com/", **TWILIO)
    event = samples.booking_created()
    handle_event(event, w.rt)

    w.run_scheduled()

    assert [f.channel for f in w.finals] == ["email", "email"]
    sms = w.event(event["event_id"])["deliveries"][2]
    result = w.rt.status.receipt(sms["provider_id"], "delivered", "")
    assert result.became_final
    assert result.delivery is not None


# --- replaying an undelivered SMS --------------------------------------------------


def test_replaying_an_undelivered_sms_sends_it_again_under_a_new_delivery_id() -> None:
    w = _worker(**TWILIO)
    event = samples.booking_created()
    handle_event(event, w.rt)
    w.run_scheduled()
    sms = next(d for d in plan(parse_event(event)) if d.channel == "sms")
    entry = w.rt.dead_letters.add_delivery(
        sms, status="undelivered", error="30003 unreachable", history=[]
    )
    assert isinstance(entry, DeadLetter)

    said = replay(entry, w.rt)
    w.run_scheduled()

    assert said == f"re-enqueued on sms as {sms.delivery_id}:r1"
    assert len(w.sms.sent) == 2
    ids = [d["delivery_id"] for d in w.event(event["event_id"])["deliveries"]]
    assert ids[-1] == f"{sms.delivery_id}:r1"
    assert _states(w.event(event["event_id"]))[-1] == ("sms", "sent")


def test_a_resend_id_is_accepted_for_a_planned_sms_only() -> None:
    event = samples.booking_created()
    planned = plan(parse_event(event))
    sms = next(d for d in planned if d.channel == "sms")
    email = next(d for d in planned if d.channel == "email")

    resend = sms.model_copy(update={"delivery_id": f"{sms.delivery_id}:r2"})
    assert parse_job(Job(delivery=resend).model_dump(mode="json")).delivery == resend

    forged = email.model_copy(update={"delivery_id": f"{email.delivery_id}:r1"})
    with pytest.raises(Exception, match="not a delivery its event calls for"):
        parse_job(Job(delivery=forged).model_dump(mode="json"))


def test_the_trace_json_is_the_models_dump(store: StatusStore) -> None:
    event = parse_event(samples.user_registered())
    [email] = plan(event)
    store.write([store.accept_call(str(event.event_id), event.type, [(email, "queued", "")])])

    found = store.event(str(event.event_id))

    assert found is not None
    assert json.loads(found.model_dump_json()) == found.model_dump(mode="json")
    assert found.deliveries[0].timeline[0].at == "2026-12-01T10:00:00.001Z"


def test_notifier_status_stays_the_function_after_the_store_module_is_imported() -> None:
    import importlib

    import notifier
    from notifier.status_lookup import status

    importlib.import_module("notifier.status_store")

    assert notifier.status is status


def test_an_emails_sent_is_its_ledger_marker_and_costs_no_status_write() -> None:
    w = _worker()
    event = samples.user_registered()

    handle_event(event, w.rt)

    (email,) = w.event(event["event_id"])["deliveries"]
    assert (email["state"], email["attempts"], email["provider"]) == ("sent", 1, "fake-smtp")
    assert [entry["state"] for entry in email["timeline"]] == ["queued", "sent"]
    record = w.rt.redis.hget(keys.status_delivery(email["delivery_id"]), "state")
    assert record == b"queued"  # the record itself was written once, at acceptance


def test_an_email_sent_after_a_retry_shows_both_and_the_attempt_that_went() -> None:
    w = _worker()
    w.smtp.failures.append(TransientError("421 try later"))
    event = samples.user_registered()

    handle_event(event, w.rt)
    w.run_scheduled()

    (email,) = w.event(event["event_id"])["deliveries"]
    assert (email["state"], email["attempts"]) == ("sent", 2)
    assert [entry["state"] for entry in email["timeline"]] == ["queued", "retrying", "sent"]
