"""The generator: deterministic for a seed, counts as promised, refuses non-empty targets."""

from __future__ import annotations

import email
import email.policy
import email.utils
import statistics
from datetime import UTC, datetime

from conftest import dump_env, run_cli, tree_listing
from mailbak import gen
from mailbak.gen import generate, split
from mailbak.layout import Flag, mailbox_ancestors, mailbox_name_problem, read_config
from mailbak.store import Store


def test_same_seed_same_store_other_seed_other_store(tmp_path):
    a = generate(tmp_path / "a", messages=400, accounts=4, seed=3)
    b = generate(tmp_path / "b", messages=400, accounts=4, seed=3)
    generate(tmp_path / "c", messages=400, accounts=4, seed=4)
    assert a == b
    la, lb, lc = (tree_listing(tmp_path / x) for x in "abc")
    # receivedid.key is a fresh secret per store, by design; LMDB files hold unused bytes that
    # differ, so databases are compared by their records.
    dbs = [rel for rel in la if rel.endswith(".db")]
    for listing in (la, lb, lc):
        listing.pop("data/receivedid.key")
        for rel in dbs:
            listing[rel] = listing[rel][:3]
    assert la == lb
    assert la != lc
    assert len(dbs) >= 8
    for rel in dbs:
        assert dump_env(tmp_path / "a" / rel) == dump_env(tmp_path / "b" / rel), rel


def test_counts_shares_and_sizes(tmp_path):
    s = generate(tmp_path / "g", messages=3000, accounts=5, seed=1)
    assert s.messages == 3000 == sum(s.accounts.values())
    assert s.live + s.expunged + s.pending_erase == 3000
    assert 0 < s.expunged and 0 < s.pending_erase and s.queued >= 3
    assert max(s.accounts.values()) > 2 * min(s.accounts.values()), "uneven, like real users"
    assert read_config(tmp_path / "g" / "config").accounts == tuple(s.accounts)
    sizes, files = [], 0
    with Store.open(tmp_path / "g", durable=False) as st:
        for name in s.accounts:
            acc = st.account(name)
            live = acc.messages()
            for id_, rec in live.items():
                assert acc.message_path(id_).stat().st_size == rec["size"]
                sizes.append(rec["size"])
            files += sum(1 for p in acc.msg_dir.rglob("*") if p.is_file())
            for id_ in acc.erasing():
                assert acc.message_path(id_).exists()
        assert len(st.queue.ids()) == s.queued
    assert files == s.live + s.pending_erase
    assert 2500 < statistics.median(sizes) < 6500, "median about 4 KiB"
    assert max(sizes) <= 1 << 20
    data = tmp_path / "g" / "data"
    assert (data / "acme").is_dir() and any((data / "accounts").glob("*/junkfilter.db"))
    assert (tmp_path / "g" / "config" / "current.pem").is_symlink()


def test_split_is_exact():
    import random

    for total, k in ((0, 3), (1, 5), (1000, 7), (12345, 50)):
        parts = split(total, k, random.Random(0))
        assert len(parts) == k and sum(parts) == total


def test_cli_gen_refuses_non_empty_target(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x").write_text("mine")
    p = run_cli("gen", tmp_path / "t", "--messages", "10", "--accounts", "1")
    assert p.returncode == 2
    assert "not an empty directory" in p.stderr
    assert (tmp_path / "t" / "x").read_text() == "mine"


def test_cli_gen_makes_a_store(tmp_path):
    p = run_cli("gen", tmp_path / "t", "--messages", "200", "--accounts", "2", "--seed", "5")
    assert p.returncode == 0, p.stderr
    assert "generated" in p.stdout
    assert (tmp_path / "t" / "data" / "accounts").is_dir()


def test_version_and_help_list_the_commands():
    v = run_cli("--version")
    assert v.returncode == 0 and v.stdout.startswith("mailbak, version ")
    h = run_cli("--help")
    for cmd in ("backup", "verify", "restore", "gen", "demo"):
        assert cmd in h.stdout


def test_mailboxes_flags_times_and_heads_are_realistic(tmp_path):
    """Every account has the mailboxes clients make and a dated archive; the bigger ones user
    folders, nested and non-ASCII. Flags follow the mailbox, received times its period, and
    each file's head (parsed by Python's email package) names its message and dates it."""
    s = generate(tmp_path / "g", messages=4000, accounts=3, seed=2)
    flags_known = {f.value for f in Flag}
    message_ids, subjects, encoded = set(), [], 0
    user_folders_seen: set[str] = set()
    with Store.open(tmp_path / "g", durable=False) as st:
        for name in s.accounts:
            acc = st.account(name)
            names = {i: rec["name"] for i, rec in acc.mailboxes().items()}
            assert set(names.values()) >= {"Inbox", "Sent", "Drafts", "Trash", "Junk", "Archive", "Archive/2024", "Archive/2023"}
            for n in names.values():
                assert mailbox_name_problem(n) is None
                assert all(a in names.values() for a in mailbox_ancestors(n)), n
            user_folders_seen |= set(names.values()) - {p.name for p in gen.STANDARD_MAILBOXES}
            by_box: dict[str, list[tuple[int, dict]]] = {}
            for id_, rec in acc.messages().items():
                by_box.setdefault(names[rec["mailbox_id"]], []).append((id_, rec))
                assert set(rec["flags"]) <= flags_known and not set(rec.get("keywords", ())) & flags_known
                assert rec["received"] < gen.EPOCH
            assert all("\\Seen" in r["flags"] for _, r in by_box["Sent"])
            assert all("\\Draft" in r["flags"] for _, r in by_box["Drafts"])
            assert all("$Junk" in r["flags"] for _, r in by_box["Junk"])
            inbox = [r for _, r in by_box["Inbox"]]
            seen = sum("\\Seen" in r["flags"] for r in inbox) / len(inbox)
            assert 0.75 < seen < 0.95, seen
            for flag in ("\\Flagged", "\\Answered", "$Forwarded"):
                assert any(flag in r["flags"] for r in inbox), flag
            assert any(r.get("keywords") for r in inbox)
            for box, year in (("Archive/2023", 2023), ("Archive/2024", 2024), ("Inbox", 2025)):
                for _, r in by_box[box]:
                    assert datetime.fromtimestamp(r["received"], UTC).year == year, (box, r)
            # Within a mailbox, UIDs rise with the received time, as deliveries would have it.
            for box, msgs in by_box.items():
                ordered = sorted(msgs, key=lambda m: m[1]["uid"])
                assert [r["received"] for _, r in ordered] == sorted(r["received"] for _, r in ordered), box
            for id_, rec in list(acc.messages().items())[:150]:
                raw = acc.message_path(id_).read_bytes()
                head = email.message_from_bytes(raw, policy=email.policy.default)
                assert head["Message-ID"] not in message_ids
                message_ids.add(head["Message-ID"])
                date = email.utils.parsedate_to_datetime(head["Date"]).timestamp()
                assert rec["received"] - 600 < date <= rec["received"]
                assert head["To"] == f"{name}@example.org"
                assert str(head["Subject"]).endswith(f" #{id_}")
                assert head["From"].addresses[0].domain
                subjects.append(str(head["Subject"]))
                encoded += b"Subject: =?UTF-8?" in raw
    assert {"Projekte", "Projekte/Übersicht", "Reçus"} <= user_folders_seen
    assert encoded > 0 and any(not t.isascii() for t in subjects) and any(t.isascii() for t in subjects)
