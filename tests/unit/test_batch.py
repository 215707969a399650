"""notifier.handle_events without Celery: each event of a batch handled as if it came alone."""

from __future__ import annotations

import dataclasses
from typing import Any

from notifier import keys
from notifier.batch import MAX_BATCH_EVENTS, handle_events
from notifier.errors import PublishError
from notifier.jobs import Job
from notifier.pipeline import task_failed
from tests import samples
from tests.unit import test_pipeline
from tests.unit.test_pipeline import TWILIO, MakeWorld, RecordingScheduler, World

# The pipeline tests' fixtures: a Runtime wired to fakes.
make_world = test_pipeline.make_world
world = test_pipeline.world


def test_every_event_of_a_batch_is_sent(world: World) -> None:
    events = [samples.user_registered() for _ in range(3)]

    outcomes = handle_events(events, world.rt)

    assert [outcome.outcome for outcome in outcomes] == ["sent"] * 3
    assert sorted(mail.recipient for mail in world.smtp.sent) == sorted(
        event["user"]["email"] for event in events
    )


def test_a_batch_sent_again_sends_only_what_the_ledger_has_not_seen(world: World) -> None:
    first, second = samples.user_registered(), samples.user_registered()
    handle_events([first], world.rt)

    outcomes = handle_events([first, second], world.rt)

    assert [outcome.outcome for outcome in outcomes] == ["duplicate", "sent"]
    assert len(world.smtp.sent) == 2


def test_an_invalid_event_is_rejected_alone_and_the_others_are_sent(world: World) -> None:
    bad = samples.user_registered()
    del bad["user"]
    good = samples.user_registered()

    outcomes = handle_events([bad, "not an object", good], world.rt)

    assert [outcome.outcome for outcome in outcomes] == ["sent"]
    assert [entry.status for entry in world.dead_letters] == ["rejected", "rejected"]


def test_a_batch_that_is_not_an_array_is_rejected_with_the_reason(world: World) -> None:
    handle_events(samples.user_registered(), world.rt)

    (entry,) = world.dead_letters
    assert entry.status == "rejected"
    assert entry.errors == [f"{keys.HANDLE_EVENTS_TASK} takes a JSON array of events, got object"]
    assert world.smtp.sent == []


def test_a_batch_over_the_limit_is_rejected_whole_and_nothing_is_sent(world: World) -> None:
    events = [samples.user_registered() for _ in range(MAX_BATCH_EVENTS + 1)]

    handle_events(events, world.rt)

    (entry,) = world.dead_letters
    assert entry.errors == [
        f"{keys.HANDLE_EVENTS_TASK} takes at most 100 events in one message, got 101"
    ]
    assert world.smtp.sent == []


@dataclasses.dataclass
class RefusingScheduler(RecordingScheduler):
    """The broker refuses the n-th job (an SMS of one event), takes the others."""

    refuse_at: int = 0
    calls: int = 0

    def schedule(self, job: Job, countdown: float) -> None:
        self.calls += 1
        if self.calls == self.refuse_at:
            raise PublishError("broker refused the job")
        super().schedule(job, countdown)


def test_one_events_failure_is_its_own_dead_letter_and_the_others_are_still_sent(
    make_world: MakeWorld,
) -> None:
    world = make_world(**TWILIO)
    scheduler = RefusingScheduler(refuse_at=2)  # the second booking's SMS
    rt = dataclasses.replace(world.rt, scheduler=scheduler)
    bookings = [samples.booking_created() for _ in range(3)]

    handle_events(bookings, rt)

    (entry,) = world.dead_letters
    assert entry.status == "failed"
    assert entry.event_id == bookings[1]["event_id"]
    assert "PublishError: broker refused the job" in entry.errors[0]
    # Every booking's two emails went out, the failed one's included (before its SMS).
    assert len(world.smtp.sent) == 6
    assert len(scheduler.scheduled) == 2


def test_a_failed_batch_message_is_kept_as_one_dead_letter_per_event(world: World) -> None:
    events: list[Any] = [samples.user_registered(), samples.user_registered()]

    task_failed(keys.HANDLE_EVENTS_TASK, (events,), {}, RuntimeError("boom"), world.rt)

    assert sorted(entry.event_id or "" for entry in world.dead_letters) == sorted(
        event["event_id"] for event in events
    )
    assert {entry.status for entry in world.dead_letters} == {"failed"}
