"""The generator: deterministic for a seed, counts as promised, refuses non-empty targets."""

from __future__ import annotations

import statistics

from conftest import dump_env, run_cli, tree_listing
from mailbak.gen import generate, split
from mailbak.layout import read_config
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
