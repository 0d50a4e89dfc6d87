"""The engine's LMDB checker (rust/lmdbfile/, `_engine.lmdb_check`) against independent
oracles: py-lmdb's offline verifier `lmdb.verify` (pure Python) over a corpus of damaged copies
of real LMDB files, and LMDB's own C tool `mdb_dump` over a backup's databases."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
from conftest import backup_ok, make_store
from lmdb.verify import VerifyError, verify

PAGE = 4096
P_BRANCH, P_LEAF, P_OVERFLOW = 0x01, 0x02, 0x04
F_BIGDATA = 0x01

#: One damage per case, taken in turn (see `damage`).
KINDS = ("meta", "header", "branch", "leaf", "overflow", "bigdata_node", "truncate", "garbage")
#: Cases per base file.
CASES_PER_BASE = 160


# The corpus ------------------------------------------------------------------------------------


def rich_file(path: Path) -> None:
    """An LMDB file with every structure the checker walks: branch levels (1500 keys), values
    larger than a page (overflow runs of 2 to 4 pages), sorted duplicates inline (sub-pages) and
    in sub-trees, and a free list (three transactions of deletes)."""
    env = lmdb.open(str(path), subdir=False, map_size=64 << 20, max_dbs=8)
    plain = env.open_db(b"plain")
    big = env.open_db(b"big")
    dups = env.open_db(b"dups", dupsort=True)
    rng = random.Random(1)
    with env.begin(write=True) as t:
        for i in range(1500):
            t.put(b"k%06d" % i, rng.randbytes(40), db=plain)
        for i in range(12):
            t.put(b"big%02d" % i, rng.randbytes(PAGE * (1 + i % 3) + 100), db=big)
        for i in range(40):
            for j in range(20):
                t.put(b"d%03d" % i, b"v%05d" % j, db=dups)
        for i in range(2):
            for j in range(800):
                t.put(b"many%d" % i, b"w%06d" % j, db=dups)
    for r in range(3):
        with env.begin(write=True) as t:
            for i in range(r, 1500, 7):
                t.delete(b"k%06d" % i, db=plain)
            t.delete(b"big%02d" % r, db=big)
    env.close()
    os.unlink(f"{path}-lock")


def base_files(tmp: Path) -> dict[str, bytes]:
    """Real LMDB files at rest: the rich file, its compacted copy (what a backup holds), and an
    account index of a generated mail store."""
    rich = tmp / "rich.db"
    rich_file(rich)
    env = lmdb.open(str(rich), subdir=False, readonly=True, lock=False, max_dbs=8)
    env.copy(str(tmp / "compact.db"), compact=True)
    env.close()
    store = make_store(tmp / "store", messages=600, accounts=1, seed=9)
    return {
        "rich": rich.read_bytes(),
        "compact": (tmp / "compact.db").read_bytes(),
        "account index": (store / "data" / "accounts" / "user0000" / "index.db").read_bytes(),
    }


def tree_pages(raw: bytes) -> dict[int, list[int]]:
    """Page numbers by type (branch, leaf, first page of an overflow run) of the intact file."""
    out: dict[int, list[int]] = {P_BRANCH: [], P_LEAF: [], P_OVERFLOW: []}
    for pg in range(2, len(raw) // PAGE):
        pgno, _pad, flags, _lower, _upper = struct.unpack_from("<QHHHH", raw, pg * PAGE)
        if pgno == pg:
            for kind in out:
                if flags & kind:
                    out[kind].append(pg)
    return out


def bigdata_nodes(raw: bytes, leaves: list[int]) -> list[int]:
    """Byte offsets of the leaf nodes whose value is an overflow run."""
    out = []
    for pg in leaves:
        base = pg * PAGE
        lower = struct.unpack_from("<H", raw, base + 12)[0]
        for i in range((lower - 16) // 2):
            ptr = struct.unpack_from("<H", raw, base + 16 + 2 * i)[0]
            if ptr + 8 <= PAGE and struct.unpack_from("<H", raw, base + ptr + 4)[0] & F_BIGDATA:
                out.append(base + ptr)
    return out


def damage(raw: bytes, rng: random.Random, kind: str) -> dict:
    """One deterministic damage of `kind`: byte XOR patches and/or a truncation."""
    pages = tree_pages(raw)
    patches: list[tuple[int, int]] = []
    truncate = None

    def flip(offset: int) -> None:
        patches.append((offset, 1 << rng.randrange(8)))

    def used_byte(pg: int) -> int:
        """A byte of the page's header, pointer array or nodes (not its unused middle)."""
        lower, upper = struct.unpack_from("<HH", raw, pg * PAGE + 12)
        return pg * PAGE + rng.choice([*range(16, lower), *range(upper, PAGE)])

    if kind == "meta":
        flip(rng.choice([0, PAGE]) + rng.randrange(16 + 136))
    elif kind == "header":
        flip(rng.choice(sum(pages.values(), [])) * PAGE + rng.randrange(16))
    elif kind in ("branch", "leaf"):
        flip(used_byte(rng.choice(pages[P_BRANCH if kind == "branch" else P_LEAF])))
    elif kind == "overflow":
        runs = pages[P_OVERFLOW]
        if runs:
            flip(rng.choice(runs) * PAGE + rng.randrange(16))
        else:
            flip(used_byte(rng.choice(pages[P_LEAF])))
    elif kind == "bigdata_node":
        nodes = bigdata_nodes(raw, pages[P_LEAF])
        if nodes:
            node = rng.choice(nodes)
            ksize = struct.unpack_from("<H", raw, node + 6)[0]
            # The value size, the flags, or the overflow run's page number.
            flip(node + rng.choice([0, 1, 2, 4, 8 + ksize, 8 + ksize + 1, 8 + ksize + 2]))
        else:
            flip(used_byte(rng.choice(pages[P_LEAF])))
    elif kind == "truncate":
        truncate = rng.choice([rng.randrange(len(raw)), PAGE * rng.randrange(1, len(raw) // PAGE)])
    elif kind == "garbage":
        at = rng.choice(sum(pages.values(), [])) * PAGE + rng.randrange(PAGE - 8)
        patches += [(at + j, rng.randrange(1, 256)) for j in range(8)]
    return {"patches": patches, "truncate": truncate}


def apply(raw: bytes, case: dict) -> bytes:
    b = bytearray(raw)
    for off, x in case["patches"]:
        b[off] ^= x
    if case["truncate"] is not None:
        del b[case["truncate"] :]
    return bytes(b)


# The two checkers --------------------------------------------------------------------------------

#: Runs the Rust checker over every case in a child process: a crash or a hang there fails the
#: test naming the case instead of killing pytest. One JSON line per case, flushed.
RUST_BATCH = r"""
import json, sys, time
from mailbak import _engine
job = json.load(sys.stdin)
bases = {k: open(v, "rb").read() for k, v in job["bases"].items()}
scratch = job["scratch"]
for i, case in enumerate(job["cases"]):
    b = bytearray(bases[case["base"]])
    for off, x in case["patches"]:
        b[off] ^= x
    if case["truncate"] is not None:
        del b[case["truncate"]:]
    with open(scratch, "wb") as f:
        f.write(b)
    start = time.monotonic()
    try:
        _engine.lmdb_check(scratch)
        res = {"reject": False}
    except _engine.LmdbError as e:
        res = {"reject": True, "error": str(e)}
    except OSError as e:
        res = {"reject": True, "error": f"OSError: {e}"}
    res["seconds"] = time.monotonic() - start
    print(json.dumps({"i": i, **res}), flush=True)
"""


def run_rust(tmp: Path, bases: dict[str, Path], cases: list[dict]) -> list[dict]:
    job = {"bases": {k: str(v) for k, v in bases.items()}, "scratch": str(tmp / "rust-case.db"), "cases": cases}
    try:
        p = subprocess.run([sys.executable, "-c", RUST_BATCH], input=json.dumps(job), capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        done = (e.stdout or b"").count(b"\n") if isinstance(e.stdout, bytes) else (e.stdout or "").count("\n")
        pytest.fail(f"the Rust checker hung on case {done}: {cases[done]}")
    lines = p.stdout.splitlines()
    assert p.returncode == 0, f"the Rust checker crashed (exit {p.returncode}) on case {len(lines)}: {cases[len(lines)] if len(lines) < len(cases) else '?'}\n{p.stderr[-3000:]}"
    return [json.loads(line) for line in lines]


DUPSORT_COUNT = re.compile(r"^main/(?P<db>.+) DB: walked \d+ (branch|leaf) pages( \(\d+ with dup sub-trees\))?, record says \d+$")
OVERFLOW_RUN = re.compile(r"^main/(?P<db>.+) DB: overflow page \d+ header mp_pages (?P<has>\d+) != OVPAGES\(\d+\)=(?P<needs>\d+)$")
OVERFLOW_COUNT = re.compile(r"^main/(?P<db>.+) DB: walked (?P<walked>\d+) overflow pages, record says (?P<record>\d+)$")
LEAK = re.compile(r"^(?P<n>\d+) page\(s\) are neither reachable nor in the freeDB -- a leak \(first: page \d+\)$")


def explained_by_lmdb_itself(problems: list[str], dupsort_names: set[str]) -> bool:
    """Whether every problem lmdb.verify reports is a state LMDB 0.9.36 (the one py-lmdb 3.0
    bundles) writes into intact files, which lmdb.verify's exact rules call damage. Both are
    shown on pristine files by test_lmdb_verify_rejects_states_lmdb_writes:

    - page counts of a DUPSORT database: LMDB leaves a dropped duplicates sub-tree's pages in its
      database's counts, which can then exceed the file. LMDB never reads these counts; the Rust
      checker compares a DUPSORT database's entries and depth, not its page counts.
    - an overflow run longer than its value needs: a big value overwritten in the same
      transaction by a smaller big value is written into the run in place (mdb_cursor_put), and
      the run keeps its length (by which LMDB frees and counts it). lmdb.verify then also
      reports the run's tail as a leak and the database's overflow count as off, by exactly that
      surplus; both are checked to match, so no other finding can hide behind this rule.
    """
    if not problems:
        return False
    surplus: dict[str, int] = {}
    counts: dict[str, int] = {}
    leaked = 0
    for p in problems:
        if (m := DUPSORT_COUNT.match(p)) and m["db"] in dupsort_names:
            continue
        if (m := OVERFLOW_RUN.match(p)) and int(m["has"]) > int(m["needs"]):
            surplus[m["db"]] = surplus.get(m["db"], 0) + int(m["has"]) - int(m["needs"])
        elif m := OVERFLOW_COUNT.match(p):
            counts[m["db"]] = int(m["record"]) - int(m["walked"])
        elif m := LEAK.match(p):
            leaked = int(m["n"])
        else:
            return False
    return counts == surplus and leaked == sum(surplus.values())


def test_lmdb_verify_rejects_states_lmdb_writes(tmp_path):
    """The exclusions above, shown: intact files that LMDB wrote fail lmdb.verify; the Rust
    checker and LMDB itself read them fine."""
    from mailbak import _engine

    # A key's duplicates sub-tree filled and dropped, 30 times.
    path = tmp_path / "drop.db"
    env = lmdb.open(str(path), subdir=False, map_size=64 << 20, max_dbs=2)
    d = env.open_db(b"dups", dupsort=True)
    for _ in range(30):
        with env.begin(write=True) as t:
            for j in range(800):
                t.put(b"many", b"w%06d" % j, db=d)
            t.put(b"a", b"b", db=d)
        with env.begin(write=True) as t:
            t.delete(b"many", db=d)
    with env.begin(db=d) as t:
        assert list(t.cursor()) == [(b"a", b"b")]
        assert t.stat(d)["leaf_pages"] > env.info()["last_pgno"], "counts larger than the file"
    env.close()
    problems = verify(str(path), subdir=False)
    assert problems and explained_by_lmdb_itself(problems, {"dups"}), problems
    assert _engine.lmdb_check(path)["dbs"] == [(b"dups", 1)]

    # A 3-page value shrunk to 2 pages in the same transaction.
    path = tmp_path / "shrunk.db"
    env = lmdb.open(str(path), subdir=False, map_size=64 << 20, max_dbs=2)
    d = env.open_db(b"big")
    with env.begin(write=True) as t:
        t.put(b"a", b"x" * 12000, db=d)
        t.put(b"a", b"y" * 5000, db=d)
    with env.begin(db=d) as t:
        assert t.get(b"a") == b"y" * 5000 and t.stat(d)["overflow_pages"] == 3
    env.close()
    problems = verify(str(path), subdir=False)
    assert len(problems) == 3 and explained_by_lmdb_itself(problems, set()), problems
    assert _engine.lmdb_check(path)["dbs"] == [(b"big", 1)]
    # The rule is exact: a run too short, or a count off by another amount, is not excused.
    assert not explained_by_lmdb_itself(["main/big DB: overflow page 4 header mp_pages 2 != OVPAGES(12000)=3"], set())
    assert not explained_by_lmdb_itself([problems[0], "main/big DB: walked 2 overflow pages, record says 4", problems[2]], set())


def test_rust_checker_rejects_whatever_lmdb_verify_rejects(tmp_path):
    bases = base_files(tmp_path)
    paths = {}
    dupsort_names: dict[str, set[str]] = {}
    for name, raw in bases.items():
        paths[name] = tmp_path / f"base-{name.replace(' ', '-')}.db"
        paths[name].write_bytes(raw)
        assert verify(str(paths[name]), subdir=False) == [], f"{name} must be intact"
        env = lmdb.open(str(paths[name]), subdir=False, readonly=True, lock=False, max_dbs=16)
        with env.begin() as t:
            names = [k for k, _ in t.cursor()]
            dupsort_names[name] = {n.decode() for n in names if env.open_db(n, txn=t, create=False).flags(t)["dupsort"]}
        env.close()
    cases = []
    for name, raw in bases.items():
        rng = random.Random(f"lmdb-oracle-{name}")
        for i in range(CASES_PER_BASE):
            cases.append({"base": name, "kind": KINDS[i % len(KINDS)], **damage(raw, rng, KINDS[i % len(KINDS)])})
    rust = run_rust(tmp_path, paths, cases)
    assert len(rust) == len(cases)

    scratch = tmp_path / "verify-case.db"
    table: dict[str, dict[str, int]] = {}
    missed, excluded = [], 0
    for case, r in zip(cases, rust, strict=True):
        scratch.write_bytes(apply(bases[case["base"]], case))
        try:
            problems = verify(str(scratch), subdir=False)
        except VerifyError as e:
            problems = [f"VerifyError: {e}"]
        if explained_by_lmdb_itself(problems, dupsort_names[case["base"]]):
            excluded += 1
            oracle = False
        else:
            oracle = bool(problems)
        row = table.setdefault(case["kind"], {"both reject": 0, "both accept": 0, "only Rust rejects": 0, "only lmdb.verify rejects": 0})
        if oracle and r["reject"]:
            row["both reject"] += 1
        elif oracle:
            row["only lmdb.verify rejects"] += 1
            missed.append((case, problems[:3]))
        elif r["reject"]:
            row["only Rust rejects"] += 1
        else:
            row["both accept"] += 1
        assert r["seconds"] < 5, f"the Rust checker took {r['seconds']:.1f}s on {case}"

    agree = sum(row["both reject"] + row["both accept"] for row in table.values())
    print(f"\nlmdb.verify vs lmdb_check over {len(cases)} damaged files ({', '.join(bases)}): agreement {agree}/{len(cases)} = {agree / len(cases):.1%}; findings of states LMDB writes excluded: {excluded}")
    for kind, row in table.items():
        print(f"  {kind:13} " + ", ".join(f"{k} {v}" for k, v in row.items()))
    assert not missed, "lmdb.verify found damage the Rust checker passed:\n" + "\n".join(f"{c}: {p}" for c, p in missed)
    # The corpus really damages files: most cases are caught by both.
    assert sum(row["both reject"] for row in table.values()) > len(cases) // 3


# mdb_dump round trip ---------------------------------------------------------------------------


def mdb_dump(path: Path) -> str:
    """Every database of an LMDB file (subdir=False) as LMDB's own mdb_dump prints it."""
    p = subprocess.run(["mdb_dump", "-n", "-a", str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.skipif(shutil.which("mdb_dump") is None, reason="mdb_dump missing: run `make system-deps` (Debian lmdb-utils)")
def test_backup_databases_equal_the_idle_store_by_mdb_dump(store, tmp_path):
    dest = tmp_path / "b"
    backup_ok(store, dest)
    dbs = sorted(p.relative_to(store) for p in (store / "data").rglob("*.db") if p.is_file())
    assert len(dbs) >= 8 and Path("data/queue/index.db") in dbs
    for rel in dbs:
        a, b = mdb_dump(store / rel), mdb_dump(dest / rel)
        # The header's mapsize is the environment's setting, not data: a compacted copy may
        # record another.
        strip = lambda s: "\n".join(ln for ln in s.splitlines() if not ln.startswith("mapsize="))  # noqa: E731
        assert strip(a) == strip(b), rel
        assert "HEADER=END" in a
