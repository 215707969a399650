"""What the status records cost on the ledger's calls (issue 15), call by call.

    .venv/bin/python -m bench.status_cost [--calls 4000] [--redis-url redis://127.0.0.1:6379/13]

For each call it prints the wall time, this process's CPU (the kernel's share of the
socket calls included) and Redis's CPU (``INFO cpu``), per call: the ledger's claim and
``sent`` marker alone, then with the status writes riding them as the pipeline sends
them, and the cost of building those writes. It flushes the database it is given.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import redis

from bench import workload
from notifier.channels import Receipt
from notifier.events import parse_event
from notifier.ledger import Ledger
from notifier.planner import Delivery, plan
from notifier.script_calls import ScriptCall
from notifier.status_store import StatusStore

__all__ = ["main"]


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def main(argv: list[str] | None = None) -> None:
    """Print the table (bench/README.md, 2026-12-08)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args(argv)
    if args.redis_url.rstrip("/").endswith("/0"):
        raise SystemExit("refusing to flush Redis database 0: give a dedicated one")
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    ledger = Ledger(client, ttl=604800)
    store = StatusStore(client, ttl=604800)
    deliveries = [plan(parse_event(e))[0] for e in workload.make_events(args.calls, 0.0)]
    receipt = Receipt(channel="email", provider="primary", provider_id="<id@example.com>")

    def accept(d: Delivery) -> ScriptCall:
        return store.accept_call(d.event_id, d.event_type, [(d, "queued", "")])

    def sent(d: Delivery) -> ScriptCall:
        return store.transition_call(
            d,
            "sent",
            detail="accepted by primary",
            attempts=1,
            provider="primary",
            provider_id="<id@example.com>",
        )

    def run(label: str, call: Callable[[Delivery], object], flush: bool = False) -> None:
        if flush:
            client.flushdb()
        for d in deliveries[:50]:  # load the scripts
            call(d)
        redis_before, cpu, wall = _redis_cpu(client), time.process_time(), time.perf_counter()
        for d in deliveries:
            call(d)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        redis_cpu = _redis_cpu(client) - redis_before
        n = len(deliveries)
        print(
            f"{label:44} wall {wall / n * 1e6:6.1f} us   client CPU {cpu / n * 1e6:6.1f} us"
            f"   Redis CPU {redis_cpu / n * 1e6:6.1f} us"
        )

    run("claim alone", lambda d: ledger.claim(d.delivery_id), flush=True)
    run("claim + queued write", lambda d: ledger.claim(d.delivery_id, (accept(d),)), flush=True)
    run("sent marker alone", lambda d: ledger.mark_sent(d.delivery_id, receipt))
    run(
        "sent marker + sent transition",
        lambda d: ledger.mark_sent(d.delivery_id, receipt, (sent(d),)),
    )
    run("building the queued write", accept)
    run("building the sent transition", sent)
    client.flushdb()
    client.close()


if __name__ == "__main__":
    main()
