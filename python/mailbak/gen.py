"""The generator: realistic stores of any size, deterministic for a seed.

Step by step:
1. Create an empty store with the writer library (config, databases, lease, queue index).
2. Choose account sizes (a Zipf-like split: a few large mailboxes, many small ones) and each
   account's mailboxes (:func:`mailbox_plan`): the ones mail clients make (Inbox, Sent,
   Drafts, Trash, Junk, Archive with Archive/YYYY below it), and for bigger accounts user
   folders, some nested and some with non-ASCII names. Per message: its mailbox (each mailbox
   has a share of the account's messages), size (lognormal around the median, capped),
   received time (spread over the mailbox's period: Archive/2023 holds 2023's mail, Inbox the
   last year's; rising with the ID, as delivery would have it), flags and keywords as the
   mailbox's kind has them (Sent ``\\Seen``, Drafts ``\\Draft``, Junk ``$Junk``, most of the
   Inbox ``\\Seen``, some ``\\Flagged``, ``\\Answered``, ``$Forwarded``, a few keywords), and
   whether it is live, expunged (record only), or pending erase (record, erase entry and file).
3. Write each account's records in one LMDB transaction (keys appended in order), then hand the
   IDs, sizes and received times of files to write to the Rust engine as packed buffers; it
   writes them in parallel, each a head (Message-ID, Date from the received time, From, To:
   the account's address, Subject, some RFC 2047 encoded non-ASCII) and body text, cut at the
   record's size. Queue messages likewise.
4. Fill the other databases, a junk filter for some accounts, ``acme/`` and config extras.

Everything random comes from one ``random.Random(seed)`` in a fixed order, and file contents
from the seed, so a seed names one store exactly. Times come from a fixed clock (:data:`EPOCH`),
not today's.
"""

from __future__ import annotations

import calendar
import math
import os
import random
from array import array
from bisect import bisect
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from itertools import accumulate
from pathlib import Path

from mailbak import _engine
from mailbak.layout import NEXT_ID_KEY, Flag, id_key, mailbox_ancestors, mailbox_name_problem, pack_ids
from mailbak.store import Store, mailbox_record, message_record, open_env, pack, queue_record

#: Share of messages expunged and already erased (record kept, no file).
EXPUNGED_SHARE = 0.04
#: Share of messages expunged with removal pending (record, erase entry, file present).
PENDING_ERASE_SHARE = 0.01
#: Queue messages per store message (at least a few are always queued).
QUEUE_SHARE = 0.002
#: Largest message generated.
MAX_SIZE = 1 << 20
#: Smallest message generated: the engine's head (at most some 330 bytes) and a line.
MIN_SIZE = 512
#: Spread of message sizes: ln-space standard deviation, which puts the mean near 1.65x the median.
SIZE_SIGMA = 1.0
#: A fixed clock, so a seed gives the same records on any day.
EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z
#: The year before EPOCH, whose mail is in the Inbox; the two before it are archived.
RECENT_YEAR = 2025
#: Accounts with at least this many messages get one user folder per this many messages.
MESSAGES_PER_USER_FOLDER = 250
#: Flag and keyword combinations drawn per mailbox kind (a table of this many, indexed per
#: message by bits of a draw already made: no extra random number per message).
FLAG_TABLE = 1024


def _year(year: int) -> tuple[int, int]:
    """(start, length) of a calendar year in unix seconds (UTC)."""
    start = calendar.timegm((year, 1, 1, 0, 0, 0))
    return start, calendar.timegm((year + 1, 1, 1, 0, 0, 0)) - start


class Kind(StrEnum):
    """What a mailbox is for, which decides its messages' flags and keywords."""

    INBOX = "inbox"
    SENT = "sent"
    DRAFTS = "drafts"
    TRASH = "trash"
    JUNK = "junk"
    ARCHIVE = "archive"
    FOLDER = "folder"


@dataclass(frozen=True)
class MailboxPlan:
    """One mailbox of a generated account."""

    name: str
    #: Relative share of the account's messages.
    weight: float
    kind: Kind
    #: Received times are spread over [start, start + span).
    start: int
    span: int


_RECENT = _year(RECENT_YEAR)
_ALL_YEARS = (_year(RECENT_YEAR - 2)[0], EPOCH - _year(RECENT_YEAR - 2)[0])

#: The mailboxes every account has: what mail clients create, and the archive by year.
STANDARD_MAILBOXES = (
    MailboxPlan("Inbox", 40, Kind.INBOX, *_RECENT),
    MailboxPlan("Sent", 12, Kind.SENT, *_ALL_YEARS),
    MailboxPlan("Drafts", 1, Kind.DRAFTS, *_RECENT),
    MailboxPlan("Trash", 4, Kind.TRASH, *_RECENT),
    MailboxPlan("Junk", 4, Kind.JUNK, *_RECENT),
    MailboxPlan("Archive", 3, Kind.ARCHIVE, *_RECENT),
    MailboxPlan(f"Archive/{RECENT_YEAR - 1}", 14, Kind.ARCHIVE, *_year(RECENT_YEAR - 1)),
    MailboxPlan(f"Archive/{RECENT_YEAR - 2}", 10, Kind.ARCHIVE, *_year(RECENT_YEAR - 2)),
)

#: User folders, in the order bigger accounts get them (an ancestor before its children).
USER_FOLDERS = (
    MailboxPlan("Projekte", 2, Kind.FOLDER, *_ALL_YEARS),
    MailboxPlan("Projekte/Übersicht", 3, Kind.FOLDER, *_ALL_YEARS),
    MailboxPlan("Reçus", 3, Kind.FOLDER, *_ALL_YEARS),
    MailboxPlan("Lists", 3, Kind.FOLDER, *_ALL_YEARS),
    MailboxPlan("Lists/debian-devel", 5, Kind.FOLDER, *_ALL_YEARS),
    MailboxPlan("Family", 2, Kind.FOLDER, *_ALL_YEARS),
)

#: The mailbox names a generated account may have.
MAILBOX_NAMES = tuple(p.name for p in STANDARD_MAILBOXES + USER_FOLDERS)

#: Per kind: (flag or keyword, chance of a message carrying it). Flags are ``layout.Flag``
#: values; anything else is a keyword.
FLAG_ODDS: dict[Kind, tuple[tuple[str, float], ...]] = {
    Kind.INBOX: (
        (Flag.SEEN, 0.85),
        (Flag.ANSWERED, 0.15),
        (Flag.FLAGGED, 0.05),
        (Flag.FORWARDED, 0.03),
        (Flag.NOT_JUNK, 0.01),
        (Flag.MDN_SENT, 0.01),
        ("$label1", 0.03),
        ("work", 0.05),
        ("Important", 0.02),
    ),
    Kind.SENT: ((Flag.SEEN, 1.0), ("work", 0.05)),
    Kind.DRAFTS: ((Flag.DRAFT, 1.0), (Flag.SEEN, 0.5)),
    Kind.TRASH: ((Flag.SEEN, 0.9), (Flag.DELETED, 0.1)),
    Kind.JUNK: ((Flag.JUNK, 1.0), (Flag.SEEN, 0.3), (Flag.PHISHING, 0.05)),
    Kind.ARCHIVE: ((Flag.SEEN, 0.98), (Flag.ANSWERED, 0.2), (Flag.FLAGGED, 0.02), (Flag.FORWARDED, 0.02), ("$label1", 0.02), ("work", 0.05), ("Important", 0.01)),
    Kind.FOLDER: ((Flag.SEEN, 0.95), (Flag.ANSWERED, 0.1), (Flag.FLAGGED, 0.03), ("work", 0.1), ("$label1", 0.02), ("Important", 0.02)),
}


@cache
def flag_table(kind: Kind) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """FLAG_TABLE (flags, keywords) pairs drawn with ``FLAG_ODDS[kind]``, the same on every
    run (a random generator of its own, seeded by the kind's name): a message takes the entry
    its draw points at."""
    rng = random.Random(f"mailbak-gen-flags-{kind.value}")
    flags = {f.value for f in Flag}
    out = []
    for _ in range(FLAG_TABLE):
        chosen = [str(name) for name, chance in FLAG_ODDS[kind] if rng.random() < chance]
        out.append((tuple(n for n in chosen if n in flags), tuple(n for n in chosen if n not in flags)))
    return tuple(out)


def mailbox_plan(count: int) -> tuple[MailboxPlan, ...]:
    """The mailboxes of an account of ``count`` messages: the standard ones, and one user folder
    per MESSAGES_PER_USER_FOLDER messages (all of them from six such), the nested and non-ASCII
    ones first."""
    return STANDARD_MAILBOXES + USER_FOLDERS[: count // MESSAGES_PER_USER_FOLDER]


def _check_plans() -> None:
    """Every planned name is one the writer library accepts, after its ancestors."""
    seen: set[str] = set()
    for plan in STANDARD_MAILBOXES + USER_FOLDERS:
        assert mailbox_name_problem(plan.name) is None, plan.name
        assert all(a in seen for a in mailbox_ancestors(plan.name)), plan.name
        seen.add(plan.name)


_check_plans()


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
        for index, (name, count) in enumerate(zip(names, split(messages, accounts, rng), strict=True)):
            acc = store.add_account(name, mailboxes=())
            _fill_account(store, acc, count, rng, mu, account_seed(seed, index), jobs, progress, summary)
            summary.accounts[name] = count
            store.close_account(name)
        _fill_queue(store, max(3, int(messages * QUEUE_SHARE)), rng, mu, seed, jobs, progress, summary)
        _fill_extras(store, names, rng)
    finally:
        store.close()
    if sync:
        os.sync()
    return summary


def account_seed(seed: int, index: int) -> int:
    """The engine's seed for the files of the ``index``-th account: message heads (Message-ID,
    From, Subject) and bodies differ between accounts, as one seed for all would repeat them
    under each account's equal IDs."""
    return (seed * 0x10000 + index) & 0xFFFF_FFFF_FFFF_FFFF


def _size(rng: random.Random, mu: float) -> int:
    return max(MIN_SIZE, min(MAX_SIZE, int(rng.lognormvariate(mu, SIZE_SIGMA))))


def _fill_account(store, acc, count, rng, mu, seed, jobs, progress, summary) -> None:
    plans = mailbox_plan(count)
    mb_ids = list(range(1, len(plans) + 1))
    cum_weights = list(accumulate(p.weight for p in plans))
    total_weight = cum_weights[-1]
    by_id = {m: (p.start, p.span, flag_table(p.kind)) for m, p in zip(mb_ids, plans, strict=True)}
    uidnext = {m: 1 for m in mb_ids}
    # IDs: mailboxes take 1..n, messages follow; one counter per index, as the writer does.
    first_msg = len(plans) + 1
    file_ids, file_sizes, file_received, erase_ids = array("Q"), array("Q"), array("Q"), []
    db = acc.db
    with acc.env.begin(write=True) as txn:
        mcur = txn.cursor(db["message"])
        for i in range(count):
            id_ = first_msg + i
            # What rng.choices(mb_ids, cum_weights=...) does, draw for draw, at a fifth of its cost.
            mb = mb_ids[bisect(cum_weights, rng.random() * total_weight)]
            size = _size(rng, mu)
            roll = rng.random()
            expunged = roll < EXPUNGED_SHARE + PENDING_ERASE_SHARE
            start, span, table = by_id[mb]
            # Spread over the mailbox's period, rising with i: later deliveries, later times.
            received = start + int((i + rng.random()) * span / count)
            # Bits of roll below those the shares look at pick the flags.
            flags, keywords = table[int(roll * (FLAG_TABLE << 10)) % FLAG_TABLE]
            rec = message_record(mailbox_id=mb, uid=uidnext[mb], size=size, received=received, expunged=expunged, flags=flags, keywords=keywords)
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
            file_received.append(received)
            summary.bytes += size
        for m, plan in zip(mb_ids, plans, strict=True):
            rec = mailbox_record(name=plan.name, uidvalidity=EPOCH + m, uidnext=uidnext[m])
            txn.put(id_key(m), pack(rec), db=db["mailbox"])
        for id_ in erase_ids:
            txn.put(id_key(id_), b"", db=db["message_erase"])
        txn.put(NEXT_ID_KEY, (first_msg + count).to_bytes(8, "big"), db=db["meta"])
    summary.messages += count
    # Erased messages have no file; they count as done so the bar reaches its end.
    progress.add_done(count - len(file_ids))
    _engine.write_messages(acc.msg_dir, pack_ids(file_ids), pack_ids(file_sizes), pack_ids(file_received), to=f"{acc.name}@example.org", seed=seed, jobs=jobs, progress=progress)


def _fill_queue(store, count, rng, mu, seed, jobs, progress, summary) -> None:
    q = store.queue
    ids, sizes, queued = array("Q"), array("Q"), array("Q")
    with q.env.begin(write=True) as txn:
        cur = txn.cursor(q.db["msg"])
        for i in range(count):
            id_ = i + 1
            size = _size(rng, mu)
            rec = queue_record(size=size, sender=f"user{rng.randrange(100):04d}@example.org", recipient=f"rcpt{rng.randrange(10000)}@example.net", queued=EPOCH + i)
            cur.put(id_key(id_), pack(rec), append=True)
            ids.append(id_)
            sizes.append(size)
            queued.append(rec["queued"])
        txn.put(NEXT_ID_KEY, (count + 1).to_bytes(8, "big"), db=q.db["meta"])
    summary.queued = count
    summary.bytes += sum(sizes)
    progress.add_total(count)
    _engine.write_messages(q.msg_dir, pack_ids(ids), pack_ids(sizes), pack_ids(queued), to="", seed=seed ^ 0x5155, jobs=jobs, progress=progress)


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
