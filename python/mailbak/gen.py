"""The generator: realistic stores of any size, deterministic for a seed.

Step by step:
1. Create an empty store with the writer library (config, databases, lease, queue index).
2. Choose account sizes (a Zipf-like split: a few large mailboxes, many small ones), mailboxes,
   and per message: mailbox, size (lognormal around the median, capped), received time, and
   whether it is live, expunged (record only), or pending erase (record, erase entry and file).
3. Write each account's records in one LMDB transaction (keys appended in order), then hand the
   IDs and sizes of files to write to the Rust engine as packed buffers; it writes them in
   parallel. Queue messages likewise.
4. Fill the other databases, a junk filter for some accounts, ``acme/`` and config extras.

Everything random comes from one ``random.Random(seed)`` in a fixed order, and file contents
from the seed, so a seed names one store exactly.
"""

from __future__ import annotations

import math
import os
import random
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from mailbak import _engine
from mailbak.layout import NEXT_ID_KEY, id_key, pack_ids
from mailbak.store import Store, mailbox_record, message_record, open_env, pack, queue_record

#: Share of messages expunged and already erased (record kept, no file).
EXPUNGED_SHARE = 0.04
#: Share of messages expunged with removal pending (record, erase entry, file present).
PENDING_ERASE_SHARE = 0.01
#: Queue messages per store message (at least a few are always queued).
QUEUE_SHARE = 0.002
#: Largest message generated.
MAX_SIZE = 1 << 20
#: Smallest message generated (a header and a line).
MIN_SIZE = 200
#: Spread of message sizes: ln-space standard deviation, which puts the mean near 1.65x the median.
SIZE_SIGMA = 1.0
#: A fixed clock, so a seed gives the same records on any day.
EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z

MAILBOX_NAMES = ("Inbox", "Sent", "Archive", "Drafts", "Trash", "Junk", "Lists", "Projects")


@dataclass
class GenSummary:
    """What was generated."""

    accounts: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    live: int = 0
    expunged: int = 0
    pending_erase: int = 0
    queued: int = 0
    bytes: int = 0


def account_names(k: int) -> list[str]:
    """K distinct names; one non-ASCII name once there are three, since real stores have them."""
    names = [f"user{i:04d}" for i in range(k)]
    if k >= 3:
        names[2] = "renée"
    return names


def split(total: int, k: int, rng: random.Random) -> list[int]:
    """``total`` split over ``k`` buckets with Zipf-like weights (largest remainder)."""
    weights = [1.0 / (i + 1) ** 0.9 for i in range(k)]
    rng.shuffle(weights)
    s = sum(weights)
    raw = [total * w / s for w in weights]
    counts = [int(r) for r in raw]
    for i in sorted(range(k), key=lambda i: raw[i] - counts[i], reverse=True)[: total - sum(counts)]:
        counts[i] += 1
    return counts


def generate(
    root: Path,
    *,
    messages: int,
    accounts: int,
    seed: int = 0,
    median_size: int = 4096,
    jobs: int = 2,
    progress: _engine.Progress | None = None,
    sync: bool = True,
) -> GenSummary:
    """Generates a store at ``root`` (must not exist or be empty). ``sync`` ends with one sync
    of the whole machine, so that a benchmark started right after it does not compete with
    write-back of the store; a test that only reads the store back leaves it out."""
    if accounts < 1:
        raise ValueError("at least one account")
    if messages < 0:
        raise ValueError("messages must not be negative")
    rng = random.Random(seed)
    progress = progress or _engine.Progress()
    progress.add_total(messages)
    summary = GenSummary()
    mu = math.log(median_size)
    store = Store.create(root, durable=False)
    try:
        names = account_names(accounts)
        for name, count in zip(names, split(messages, accounts, rng), strict=True):
            acc = store.add_account(name, mailboxes=())
            _fill_account(store, acc, count, rng, mu, seed, jobs, progress, summary)
            summary.accounts[name] = count
            store.close_account(name)
        _fill_queue(store, max(3, int(messages * QUEUE_SHARE)), rng, mu, seed, jobs, progress, summary)
        _fill_extras(store, names, rng)
    finally:
        store.close()
    if sync:
        os.sync()
    return summary


def _size(rng: random.Random, mu: float) -> int:
    return max(MIN_SIZE, min(MAX_SIZE, int(rng.lognormvariate(mu, SIZE_SIGMA))))


def _fill_account(store, acc, count, rng, mu, seed, jobs, progress, summary) -> None:
    n_mailboxes = min(len(MAILBOX_NAMES), 2 + count // 2000)
    mb_weights = [1.0 / (i + 1) for i in range(n_mailboxes)]
    mb_ids = list(range(1, n_mailboxes + 1))
    uidnext = {m: 1 for m in mb_ids}
    # IDs: mailboxes take 1..n, messages follow; one counter per index, as the writer does.
    first_msg = n_mailboxes + 1
    file_ids, file_sizes, erase_ids = array("Q"), array("Q"), []
    db = acc.db
    with acc.env.begin(write=True) as txn:
        mcur = txn.cursor(db["message"])
        for i in range(count):
            id_ = first_msg + i
            mb = rng.choices(mb_ids, mb_weights)[0]
            size = _size(rng, mu)
            roll = rng.random()
            expunged = roll < EXPUNGED_SHARE + PENDING_ERASE_SHARE
            rec = message_record(mailbox_id=mb, uid=uidnext[mb], size=size, received=EPOCH + id_ * 7, expunged=expunged, flags=("\\Seen",) if roll > 0.3 else ())
            uidnext[mb] += 1
            mcur.put(id_key(id_), pack(rec), append=True)
            if not expunged:
                summary.live += 1
            elif roll < PENDING_ERASE_SHARE:
                erase_ids.append(id_)
                summary.pending_erase += 1
            else:
                summary.expunged += 1
                continue
            file_ids.append(id_)
            file_sizes.append(size)
            summary.bytes += size
        for m in mb_ids:
            rec = mailbox_record(name=MAILBOX_NAMES[m - 1], uidvalidity=EPOCH + m, uidnext=uidnext[m])
            txn.put(id_key(m), pack(rec), db=db["mailbox"])
        for id_ in erase_ids:
            txn.put(id_key(id_), b"", db=db["message_erase"])
        txn.put(NEXT_ID_KEY, (first_msg + count).to_bytes(8, "big"), db=db["meta"])
    summary.messages += count
    # Erased messages have no file; they count as done so the bar reaches its end.
    progress.add_done(count - len(file_ids))
    _engine.write_messages(acc.msg_dir, pack_ids(file_ids), pack_ids(file_sizes), seed=seed, jobs=jobs, progress=progress)


def _fill_queue(store, count, rng, mu, seed, jobs, progress, summary) -> None:
    q = store.queue
    ids, sizes = array("Q"), array("Q")
    with q.env.begin(write=True) as txn:
        cur = txn.cursor(q.db["msg"])
        for i in range(count):
            id_ = i + 1
            size = _size(rng, mu)
            rec = queue_record(size=size, sender=f"user{rng.randrange(100):04d}@example.org", recipient=f"rcpt{rng.randrange(10000)}@example.net", queued=EPOCH + i)
            cur.put(id_key(id_), pack(rec), append=True)
            ids.append(id_)
            sizes.append(size)
        txn.put(NEXT_ID_KEY, (count + 1).to_bytes(8, "big"), db=q.db["meta"])
    summary.queued = count
    summary.bytes += sum(sizes)
    progress.add_total(count)
    _engine.write_messages(q.msg_dir, pack_ids(ids), pack_ids(sizes), seed=seed ^ 0x5155, jobs=jobs, progress=progress)


def _fill_extras(store: Store, names: list[str], rng: random.Random) -> None:
    data, config = store.data_dir, store.config_dir
    # Top-level databases: a few opaque records each.
    for db_name, table, n in (("auth.db", "user", len(names)), ("dmarcrpt.db", "report", 20), ("dmarceval.db", "eval", 50), ("mtasts.db", "policy", 10), ("tlsrpt.db", "report", 10), ("tlsrptresult.db", "result", 10)):
        env = open_env(data / db_name, durable=False)
        with env.begin(write=True, db=env.open_db(table.encode())) as txn:
            for i in range(n):
                txn.put(id_key(i + 1), pack({"name": names[i % len(names)], "secret": rng.randbytes(16), "n": i}))
        env.close()
    # A junk filter for every third account.
    for name in names[::3]:
        acc_dir = data / "accounts" / name
        env = open_env(acc_dir / "junkfilter.db", durable=False)
        with env.begin(write=True, db=env.open_db(b"words")) as txn:
            for i in range(200):
                txn.put(f"word{i}".encode(), pack({"ham": rng.randrange(100), "spam": rng.randrange(100)}))
        env.close()
        (acc_dir / "junkfilter.bloom").write_bytes(rng.randbytes(64 * 1024))
    (data / "acme").mkdir(mode=0o750)
    acme = data / "acme" / "keycerts"
    acme.mkdir(mode=0o750)
    for host in ("mail.example.org", "mta-sts.example.org"):
        p = acme / f"{host}.pem"
        p.write_text(f"-----BEGIN PRIVATE KEY-----\n{rng.randbytes(48).hex()}\n-----END PRIVATE KEY-----\n")
        p.chmod(0o600)
    (config / "domains.conf").write_text("Domains:\n\texample.org: nil\n")
    certs = config / "certs"
    certs.mkdir(mode=0o750)
    (certs / "mail.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (config / "current.pem").symlink_to("certs/mail.pem")


def age_tree(root: Path, seconds: int = 3600) -> None:
    """Moves the mtime of every file below ``root`` (symlinks themselves included) ``seconds``
    into the past. A real store's unchanged files are older than its last backup; a store
    generated moments before one is not, and the next backup would reuse none of its files (a
    reference file not older than the reference's start less a margin is copied:
    docs/REPOSITORY.md, "racily clean"). For tests and benchmarks that back up a fresh store."""
    shift = seconds * 1_000_000_000
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            os.utime(path, ns=(st.st_atime_ns - shift, st.st_mtime_ns - shift), follow_symlinks=False)
