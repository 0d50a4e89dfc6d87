"""A mail server stand-in: delivers, expunges (and so erases), enqueues and dequeues as fast as it
can through the writer library, and logs every operation once it is committed.

    python tests/live_writer.py STORE LOG [--seconds S] [--ignore-lease] [--seed N]

Runs until SIGTERM, SIGINT or S seconds. LOG gets one JSON object per line:
``{"op": "deliver", "account": "a", "id": 7, "start": t0, "end": t1}`` (times from time.time(),
``end`` after the commit), ``expunge`` (with ``ids`` and ``removed``: files removed now, 0 when a
backup holds the lease), ``enqueue``, ``dequeue``, and a final ``{"op": "stats", ...}`` with
operation counts and the worst latency per operation.

With ``--ignore-lease`` it removes files without asking for the lease, as a writer that ignores
the protocol of docs/FORMAT.md would.

Used by tests/test_live.py and bench/soak.py.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from mailbak.store import Lease, Store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("store", type=Path)
    ap.add_argument("log", type=Path)
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--ignore-lease", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    # Stop between operations, never inside one, so the log holds every committed operation.
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
    if args.ignore_lease:

        @contextmanager
        def always(self):
            yield True

        Lease.exclusive_nowait = always  # type: ignore[method-assign]

    rng = random.Random(args.seed)
    counts: dict[str, int] = {}
    worst: dict[str, float] = {}
    deadline = time.monotonic() + args.seconds
    with Store.open(args.store, durable=False) as store, open(args.log, "w", buffering=1) as log:

        def record(op: str, start: float, **fields) -> None:
            end = time.time()
            counts[op] = counts.get(op, 0) + 1
            worst[op] = max(worst.get(op, 0.0), end - start)
            log.write(json.dumps({"op": op, "start": start, "end": end, **fields}) + "\n")

        names = list(store.account_names())
        live: dict[str, list[int]] = {n: sorted(store.account(n).messages()) for n in names}
        inboxes = {n: store.account(n).mailbox_id("Inbox") if _has_inbox(store, n) else next(iter(store.account(n).mailboxes())) for n in names}
        queued = store.queue.ids()
        while time.monotonic() < deadline and not stopping:
            name = rng.choice(names)
            acc = store.account(name)
            roll = rng.random()
            start = time.time()
            if roll < 0.45:
                body = b"Subject: live\r\n\r\n" + rng.randbytes(rng.randrange(100, 3000))
                id_ = acc.deliver(inboxes[name], body)
                live[name].append(id_)
                record("deliver", start, account=name, id=id_)
            elif roll < 0.7 and live[name]:
                ids = rng.sample(live[name], min(len(live[name]), rng.randrange(1, 4)))
                removed = acc.expunge(ids)
                for i in ids:
                    live[name].remove(i)
                record("expunge", start, account=name, ids=ids, removed=removed)
            elif roll < 0.85:
                id_ = store.queue.enqueue(rng.randbytes(rng.randrange(100, 2000)), sender="live@example.org", recipient="x@example.net")
                queued.append(id_)
                record("enqueue", start, id=id_)
            elif queued:
                id_ = queued.pop(rng.randrange(len(queued)))
                removed = store.queue.dequeue(id_)
                record("dequeue", start, id=id_, removed=removed)
            else:
                removed = acc.sweep()
                record("sweep", start, account=name, removed=removed)
        log.write(json.dumps({"op": "stats", "counts": counts, "worst_latency": worst}) + "\n")
    return 0


def _has_inbox(store: Store, name: str) -> bool:
    try:
        store.account(name).mailbox_id("Inbox")
        return True
    except KeyError:
        return False


def read_log(path: Path) -> tuple[list[dict], dict]:
    """The operations and the final stats of a log (stats empty if the writer was killed)."""
    ops, stats = [], {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["op"] == "stats":
            stats = rec
        else:
            ops.append(rec)
    return ops, stats


if __name__ == "__main__":
    sys.exit(main())
