"""The receipt sweep: an undelivered SMS's follow-up is finished even if Twilio never calls again.

``receipts.apply_receipt`` puts every undelivered receipt on a list
(``notifier:receipt:pending``, with its ErrorCode) before it writes anything,
and takes it off once the follow-up (fallback email, dead letter, callback,
the dead letter's id on the status record) is known done. A web process that
dies in between leaves it there. Twilio retries a callback only when it got no
2xx, and a dead process may already have answered, so the list, not Twilio, is
what makes the follow-up happen (docs/guarantees.md, "Receipts").

Every worker runs this job in its main process (``notifier.periodic``), one
host at a time through ``notifier:receipt:sweep:lock``: every ``INTERVAL``
seconds it applies again each receipt that has waited longer than the
follow-up's lease (``receipts.FOLLOW_UP_LEASE``), which redoes only what is
missing: the fallback's delivery id is fixed (the ledger sends it once) and the
dead letter is keyed by the SMS's delivery id.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from notifier import keys
from notifier.errors import NotifierError
from notifier.logs import get_logger
from notifier.periodic import LeaseLock, Periodic
from notifier.receipts import FOLLOW_UP_LEASE, TwilioReceipt, apply_receipt
from notifier.redis_clients import reply_text
from notifier.runtime import Runtime

__all__ = ["BATCH", "INTERVAL", "ReceiptSweep", "start_receipt_sweep"]

INTERVAL = 30.0
"""Seconds between ticks: a cut-short follow-up is finished within the lease plus this."""

BATCH = 100
"""Receipts taken up per tick at most (each is a few round trips)."""


@dataclass
class ReceiptSweep:
    """One tick of the sweep (see the module docstring)."""

    rt: Runtime
    lock: LeaseLock
    wait: float = FOLLOW_UP_LEASE
    """Seconds a receipt is left to the process that took it before the sweep steps in."""

    def tick(self) -> int:
        """Apply again every receipt pending longer than ``wait``; how many were."""
        if not self.lock.acquire():
            return 0
        rt = self.rt
        before = rt.clock().timestamp() - self.wait
        sids = [
            reply_text(sid)
            for sid in rt.redis.zrangebyscore(keys.RECEIPTS_PENDING, "-inf", before, 0, BATCH)
        ]
        if not sids:
            return 0
        codes = rt.redis.hmget(keys.RECEIPTS_PENDING_CODES, sids)
        for sid, code in zip(sids, codes, strict=True):
            text = reply_text(code) if code is not None else ""
            receipt = TwilioReceipt(
                message_sid=sid,
                message_status="undelivered",
                error_code=int(text) if text.isdigit() else None,
            )
            apply_receipt(receipt, rt)
        get_logger().warning("receipt.follow_up_swept", receipts=len(sids))
        return len(sids)


def start_receipt_sweep(rt: Runtime) -> Periodic | None:
    """Start the sweep for this worker process; None when no receipts are requested."""
    if rt.settings.notifier_public_url is None:
        return None
    # The lease outlives two ticks: a host that stops frees the job that much later.
    lock = LeaseLock(rt.redis, keys.RECEIPT_SWEEP_LOCK, 2 * INTERVAL + 1)
    sweep = ReceiptSweep(rt, lock)
    periodic = Periodic(
        "receipt_sweep",
        INTERVAL,
        sweep.tick,
        expected=(redis.RedisError, NotifierError, OSError),
        on_stop=lock.release,
    )
    periodic.start()
    return periodic
