"""Benchmark harness: mailbak against the obvious alternatives, on generated stores.

    .venv/bin/python bench/run.py --messages N[,N...] [--accounts K] [--repeat R] [--seed S]
        [--dest disk|tmpfs] [--json FILE] [--smoke] [--jobs-sweep] [--only GROUP]

Method (BENCHMARKS.md has the why):
- A store per (messages, accounts, seed, location) is generated once with ``mailbak gen`` and
  cached (bench/.cache/ on disk, /dev/shm/mailbak-bench-cache/ on tmpfs). A marker file is
  written only after generation succeeds, so a half-generated store is regenerated.
- Groups of contenders, each contender a command line run as a subprocess: ``same-fs``
  (destination next to the store: hardlinks), ``cross-device`` (destination on the other file
  system: copies), ``verify`` (of one backup made untimed before the group).
- Contenders run alternately (A B C A B C ...) so that drift of the machine hits them all alike:
  one untimed warm-up round, then R timed rounds. Between runs, outside the timed part, the
  destination is deleted and the file systems are synced, so each run starts with nothing dirty
  to write back. Page caches are never dropped: these are warm-cache numbers.
- Wall time is time.perf_counter around the subprocess; peak RSS is ru_maxrss from os.wait4
  (the child and the descendants it waited for; mailbak works in threads, so it is exact; the
  harness's own peak is a floor, see rss_floor_kib).
- Every contender must exit 0 (warnings printed by mailbak are fine); anything else aborts the
  run with the command's output and exit status 1.

Markdown tables go to stdout, progress to stderr; --json FILE also keeps every raw timing.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailbak.gen import age_tree

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

#: Where stores are cached and destinations made, per location (--dest).
ROOTS = {"disk": BENCH_DIR / ".cache", "tmpfs": Path("/dev/shm/mailbak-bench-cache")}

GROUPS = ("same-fs", "cross-device", "verify")

#: Job counts of --jobs-sweep.
SWEEP_JOBS = (1, 2, 3, 4, 6, 8)

#: --smoke: small enough to finish in seconds, big enough to have several message directories.
SMOKE_MESSAGES, SMOKE_ACCOUNTS = 3000, 4

#: Disk use of a generated store per message (message files rounded up to blocks, indexes);
#: measured 8.8 KB at the default median size of 4 KiB. Used to refuse runs that cannot fit.
BYTES_PER_MESSAGE = 9_000

#: Lines of a failed command's output shown in the error.
TAIL_LINES = 40


class HarnessError(Exception):
    """The benchmark cannot go on; the message says why."""


def log(text: str) -> None:
    """Progress and notes: stderr, so that stdout is only the Markdown report."""
    print(text, file=sys.stderr, flush=True)


# Places ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Places:
    """Where a run keeps stores and makes destinations."""

    #: Stores, one directory per (messages, accounts, seed).
    cache: Path
    #: Work directory on the store's file system: same-fs destinations.
    near: Path
    #: Work directory on the other file system: cross-device destinations.
    far: Path

    @classmethod
    def of(cls, roots: dict[str, Path], store_on: str) -> Places:
        other = "tmpfs" if store_on == "disk" else "disk"
        return cls(cache=roots[store_on], near=roots[store_on] / "work", far=roots[other] / "work")

    def create(self) -> None:
        for p in (self.cache, self.near, self.far):
            p.mkdir(parents=True, exist_ok=True)
        if os.stat(self.near).st_dev == os.stat(self.far).st_dev:
            log(f"bench: note: {self.near} and {self.far} are on the same device; the cross-device group will hardlink")


def remove_tree(path: Path) -> None:
    """Deletes a destination; rm is faster than shutil.rmtree on hundreds of thousands of files."""
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--", str(path)], check=True)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_space(path: Path, messages: int, what: str) -> None:
    need = messages * BYTES_PER_MESSAGE
    if free_bytes(path) < need:
        raise HarnessError(f"{path}: {free_bytes(path) / 1e9:.1f} GB free, {what} needs about {need / 1e9:.1f} GB")


# Stores ------------------------------------------------------------------------------------


def mailbak_cli(*args: str) -> list[str]:
    """The mailbak command line as users run it (the venv's interpreter, a fresh process)."""
    return [sys.executable, "-m", "mailbak", *args]


def ensure_store(cache: Path, messages: int, accounts: int, seed: int, median_size: int | None = None) -> tuple[Path, dict]:
    """The cached store for these parameters, generated when absent or half-generated
    (``median_size``: gen's ``--median-size``; None, its default, keeps the cache's old names).
    Returns its path and the facts recorded when it was generated."""
    entry = cache / (f"store-{messages}m-{accounts}a-seed{seed}" + (f"-ms{median_size}" if median_size else ""))
    marker = entry / "complete.json"
    if marker.exists():
        return entry / "store", json.loads(marker.read_text())
    if entry.exists():
        log(f"bench: {entry} has no completion marker (interrupted generation?); regenerating")
        remove_tree(entry)
    entry.mkdir(parents=True)
    if median_size is None:  # BYTES_PER_MESSAGE is for gen's default size; others check their own
        check_space(entry, messages, f"a {messages:,}-message store")
    log(f"bench: generating {messages:,} messages over {accounts} accounts (seed {seed}) in {entry}")
    store = entry / "store"
    argv = mailbak_cli("gen", str(store), "--messages", str(messages), "--accounts", str(accounts), "--seed", str(seed), "--quiet")
    if median_size:
        argv[-1:-1] = ["--median-size", str(median_size)]
    t0 = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise HarnessError(f"{shlex.join(argv)} exited with status {done.returncode}:\n{done.stdout}{done.stderr}")
    age_tree(store)
    du = subprocess.run(["du", "-s", "--block-size=1", str(store)], capture_output=True, text=True, check=True)
    facts = {"messages": messages, "accounts": accounts, "seed": seed, **({"median_size": median_size} if median_size else {}), "generation_seconds": round(seconds, 2), "disk_bytes": int(du.stdout.split()[0])}
    marker.write_text(json.dumps(facts) + "\n")
    log(f"bench: generated in {seconds:.1f} s")
    return store, facts


# Contenders and groups ---------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """One command line of a group."""

    name: str
    #: (store, target) -> argv; the target is the destination, or the backup verified.
    argv: Callable[[Path, Path], list[str]]
    #: Send stdout to /dev/null (a listing of every file would only measure the log's writes).
    discard_stdout: bool = False


@dataclass
class Group:
    name: str
    title: str
    contenders: list[Contender]
    #: The target every contender gets.
    target: Path
    #: Whether the target is a destination made by each run (deleted after it).
    makes_target: bool = True
    #: Ratios are to this contender's median.
    reference: str = "mailbak backup"
    #: Called before each run, outside the timed part (e.g. to make a fresh target).
    prepare: Callable[[], None] | None = None
    #: Called after each successful run with the path of its output (stdout and stderr, unless
    #: discarded), before the target is removed: checks the run did its work (raises HarnessError).
    check: Callable[[Contender, Path], None] | None = None


def backup_contender(jobs: int | None = None) -> Contender:
    flags = [] if jobs is None else ["--jobs", str(jobs)]
    name = " ".join(["mailbak backup", *flags])
    return Contender(name, lambda store, dest: mailbak_cli("backup", *flags, str(store), str(dest)))


def baseline_contender(python: Path, verb: str) -> Contender:
    """``mailbak VERB`` of another build (``--baseline``: the interpreter of a venv holding it),
    so that a change is measured against what it replaces in the same run, round for round."""

    def argv(store: Path, target: Path) -> list[str]:
        operands = [str(store), str(target)] if verb == "backup" else [str(target)]
        return [str(python), "-m", "mailbak", verb, *operands]

    return Contender(f"mailbak {verb} (baseline)", argv)


def build_groups(only: str | None, places: Places, jobs_sweep: bool, rsync_ok: bool, baseline: Path | None = None) -> list[Group]:
    """The groups to run, in order (the verify group's backup is made when it starts)."""
    same_fs = [backup_contender(), backup_contender(1)]
    if baseline is not None:
        same_fs.append(baseline_contender(baseline, "backup"))
    if jobs_sweep:
        same_fs += [backup_contender(j) for j in SWEEP_JOBS if j != 1]  # --jobs 1 is already in
    same_fs += [
        Contender("cp -al", lambda store, dest: ["cp", "-al", str(store / "data"), str(dest)]),
        Contender("naive_backup.py", lambda store, dest: [sys.executable, str(BENCH_DIR / "naive_backup.py"), str(store), str(dest)]),
    ]
    cross = [backup_contender(), Contender("cp -a", lambda store, dest: ["cp", "-a", str(store / "data"), str(dest)])]
    if baseline is not None:
        cross.append(baseline_contender(baseline, "backup"))
    if rsync_ok:
        cross.append(Contender("rsync -a", lambda store, dest: ["rsync", "-a", f"{store}/data/", f"{dest}/"]))
    verify = [
        Contender("mailbak verify", lambda store, backup: mailbak_cli("verify", str(backup))),
        Contender("find -printf %s", lambda store, backup: ["find", str(backup), "-type", "f", "-printf", "%s\\n"], discard_stdout=True),
    ]
    if baseline is not None:
        verify.append(baseline_contender(baseline, "verify"))
    groups = [
        Group("same-fs", "same file system (hardlinks)", same_fs, places.near / "dest"),
        Group("cross-device", "another file system (copies)", cross, places.far / "dest"),
        Group("verify", "verify a backup", verify, places.near / "verify-backup", makes_target=False, reference="mailbak verify"),
    ]
    return [g for g in groups if only in (None, g.name)]


def ensure_rsync() -> str | None:
    """Installs rsync when missing (Debian, as root); returns why it is unavailable, or None."""
    if shutil.which("rsync"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "rsync is not installed, and installing it needs root and apt-get"
    log("bench: rsync is not installed; installing it: apt-get install -y rsync")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # apt's chatter goes to stderr with the rest of the progress; stdout stays the report.
    for step in (["apt-get", "install", "-y", "rsync"], ["apt-get", "update"], ["apt-get", "install", "-y", "rsync"]):
        if subprocess.run(step, stdout=sys.stderr, stderr=sys.stderr, env=env).returncode == 0 and shutil.which("rsync"):
            return None
    return "rsync is not installed and apt-get could not install it"


# Measuring ---------------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    rss_kib: int
    #: CPU time of the command (and the children it waited for): user (its own work) and
    #: system (the kernel's on its behalf), which tell mailbak's cost from the file system's.
    user_s: float = 0.0
    sys_s: float = 0.0


@dataclass
class Result:
    """Every run of one contender in one group."""

    name: str
    argv: list[str]
    warmup: Sample | None = None
    samples: list[Sample] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "argv": self.argv,
            "warmup_seconds": self.warmup.seconds if self.warmup else None,
            "seconds": [s.seconds for s in self.samples],
            "rss_kib": [s.rss_kib for s in self.samples],
        }


def run_once(argv: list[str], *, discard_stdout: bool, log_path: Path) -> Sample:
    """Runs one command and measures it; raises HarnessError unless it exits 0."""
    with open(log_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL if discard_stdout else out, stderr=out)
        # wait4 rather than proc.wait(): it also returns the child's resource usage.
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped; keeps Popen from waiting again
    if proc.returncode != 0:
        lines = log_path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        raise HarnessError(f"{shlex.join(argv)} exited with status {proc.returncode}; its output (last {TAIL_LINES} lines):\n" + "\n".join(lines))
    return Sample(seconds, usage.ru_maxrss, usage.ru_utime, usage.ru_stime)  # ru_maxrss: KiB on Linux


def rss_floor_kib() -> int:
    """The lowest peak RSS a child can show. At exec, Linux folds the peak RSS of the memory the
    child leaves (with vfork: the harness's own) into the child's ru_maxrss, so no contender can
    read below the harness's own peak. Reading the harness's peak after the runs bounds them all."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def settle() -> None:
    """Writes back everything dirty, so that no run pays for an earlier run's (or deletion's)
    write-back; mailbak's syncfs of DEST would otherwise flush other contenders' data."""
    os.sync()


def run_group(group: Group, store: Path, repeat: int, label: str, log_path: Path) -> list[Result]:
    """Warm-up round, then ``repeat`` timed rounds, contenders alternating within each round."""
    results = [Result(c.name, c.argv(store, group.target)) for c in group.contenders]
    if group.makes_target:
        remove_tree(group.target)  # left over from an aborted run
    for round_ in range(repeat + 1):
        what = "warm-up" if round_ == 0 else f"round {round_}/{repeat}"
        for contender, result in zip(group.contenders, results, strict=True):
            if group.prepare is not None:
                group.prepare()
            settle()
            try:
                sample = run_once(result.argv, discard_stdout=contender.discard_stdout, log_path=log_path)
                if group.check is not None:
                    group.check(contender, log_path)
            except HarnessError as e:
                kept = f"\n(its destination {group.target} is left for inspection)" if group.makes_target and group.target.exists() else ""
                raise HarnessError(f"{label} {group.name}, {contender.name}: {e}{kept}") from None
            if group.makes_target:
                remove_tree(group.target)
            if round_ == 0:
                result.warmup = sample
            else:
                result.samples.append(sample)
            log(f"  {label} {group.name} {what}: {contender.name}: {sample.seconds:.3f} s, {sample.rss_kib / 1024:.0f} MiB")
    return results


def run_size(groups: list[Group], store: Path, messages: int, repeat: int, places: Places, log_path: Path) -> dict[str, list[Result]]:
    """Every group on one store."""
    out: dict[str, list[Result]] = {}
    label = f"[{messages:,}]"
    for group in groups:
        if group.name == "cross-device":
            check_space(places.far, messages, "a copy of the store")
        if group.name == "verify":
            # The backup verified: made once, untimed, the way a user would make it.
            remove_tree(group.target)
            log(f"  {label} verify: making the backup to verify (untimed)")
            run_once(mailbak_cli("backup", str(store), str(group.target)), discard_stdout=False, log_path=log_path)
        out[group.name] = run_group(group, store, repeat, label, log_path)
        if not group.makes_target:
            remove_tree(group.target)  # only on success: after a failure it is left to inspect
    return out


# Reporting ---------------------------------------------------------------------------------


def markdown_table(header: list[str], rows: list[list[str]], align_left: int = 1) -> str:
    """A Markdown table; the first ``align_left`` columns left-aligned, the rest right."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if i < align_left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


#: A peak this close to the floor (KiB) is the floor, not the contender's own use.
FLOOR_MARGIN_KIB = 512


def rss_cell(peak_kib: int, floor_kib: int) -> str:
    if peak_kib <= floor_kib + FLOOR_MARGIN_KIB:
        return f"≤{floor_kib / 1024:.0f}"
    return f"{peak_kib / 1024:.0f}"


def group_table(group: Group, results: list[Result], messages: int, floor_kib: int) -> str:
    ref = next(r for r in results if r.name == group.reference).median
    rows = []
    for r in results:
        times = [s.seconds for s in r.samples]
        peak = max(s.rss_kib for s in r.samples)
        rows.append([f"`{r.name}`", f"{r.median:.3f}", f"{min(times):.3f}", f"{max(times):.3f}", rss_cell(peak, floor_kib), f"{r.median / ref:.2f}", f"{r.median / messages * 1e6:.2f}"])
    header = ["contender", "median s", "min s", "max s", "peak RSS MiB", f"× `{group.reference}`", "µs/message"]
    return markdown_table(header, rows)


def scaling_table(sizes: list[int], per_size: dict[int, dict[str, list[Result]]], groups: list[Group]) -> str:
    """µs per message per contender (rows) per size (columns)."""
    rows = []
    for group in groups:
        for i, contender in enumerate(group.contenders):
            cells = [f"{per_size[n][group.name][i].median / n * 1e6:.2f}" for n in sizes]
            rows.append([group.name, f"`{contender.name}`", *cells])
    return markdown_table(["group", "contender", *(f"{n:,}" for n in sizes)], rows, align_left=2)


def fs_type(path: Path) -> str:
    """File system type as ``stat -f`` names it, with findmnt's (more precise) name when they
    differ: stat calls ext4 "ext2/ext3"."""
    st = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
    fm = ""
    if shutil.which("findmnt"):
        # Stacked mounts print one line each; the first is the one that serves the path.
        fm = next(iter(subprocess.run(["findmnt", "-no", "FSTYPE", "-T", str(path)], capture_output=True, text=True).stdout.split()), "")
    return f"{fm} (stat -f: {st})" if fm and fm != st else st


def first_line(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return None


def meminfo_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def probe_mailbak() -> dict:
    """mailbak's version and the path of its extension, asked of a child interpreter: importing
    mailbak here would add its footprint to the harness's, the floor of every peak RSS."""
    code = "import importlib.util, json, mailbak; s = importlib.util.find_spec('mailbak._engine'); print(json.dumps({'version': mailbak.__version__, 'engine': s and s.origin}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise HarnessError(f"{sys.executable} cannot import mailbak (run make setup): {done.stderr.strip()}")
    return json.loads(done.stdout)


def stale_engine(engine: str | None) -> str | None:
    """Why the installed extension looks older than the Rust sources, or None."""
    if not engine:
        return "mailbak._engine is not installed (run make setup)"
    sources = [*REPO.glob("rust/*.rs"), REPO / "Cargo.toml", REPO / "Cargo.lock"]
    newest = max((p.stat().st_mtime for p in sources if p.exists()), default=0)
    if newest > os.stat(engine).st_mtime:
        return f"{engine} is older than the Rust sources: results may not reflect them (run make setup)"
    return None


def source_digest(engine: str | None) -> str:
    """A digest of the code a run executes: the package's Python files and the installed
    extension (Rust sources matter only once built; stale_engine covers those). Compared at the
    end of a run, it catches the code changing under it."""
    files = sorted({*REPO.glob("python/mailbak/**/*.py"), *([Path(engine)] if engine else [])})
    h = hashlib.sha256()
    for p in files:
        # Streamed: reading the extension whole would raise the harness's peak RSS, which is
        # the floor of every contender's (see rss_floor_kib).
        with open(p, "rb") as f:
            h.update(os.fsencode(p) + b"\0" + hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:12]


def source_commit() -> str | None:
    """The commit measured, and whether python/ or rust/ differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "python", "rust"]).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout
    return f"{head} with uncommitted changes to python/ or rust/" if dirty else head


#: The dentry hash size read from the boot log, per boot (the kernel's ring buffer drops its
#: first lines once enough is logged, so a later run of the same boot reads it from here).
DENTRY_MEMO = BENCH_DIR / ".cache" / "dentry-hash-entries.json"


def dentry_hash_entries() -> int | None:
    """The kernel's dentry hash size (its boot log: "Dentry cache hash table entries"). It moves
    lookup-bound ratios between machines (few entries: long hash chains at millions of files),
    so every result records it. Remembered per boot in DENTRY_MEMO; None when neither the boot
    log nor the memo of this boot has it."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = None
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        log = ""
    for line in log.splitlines():
        if "Dentry cache hash table entries:" in line:
            entries = int(line.split("entries:")[1].split()[0])
            if boot:
                try:
                    DENTRY_MEMO.parent.mkdir(parents=True, exist_ok=True)
                    DENTRY_MEMO.write_text(json.dumps({"boot_id": boot, "entries": entries}) + "\n")
                except OSError:
                    pass  # only a memo
            return entries
    try:
        memo = json.loads(DENTRY_MEMO.read_text())
    except (OSError, ValueError):
        return None
    return memo.get("entries") if boot and memo.get("boot_id") == boot else None


def free_page_reporting() -> bool | None:
    """Whether this is a virtual machine whose balloon device hands freed guest memory back to
    the host (virtio feature bit 5, VIRTIO_BALLOON_F_REPORTING, with the driver bound). Then a
    page the kernel takes again after a while costs a host fault on first touch: a cold run that
    instantiates millions of inodes pays it per inode, and more of it at 5M than at 1M (the
    profile in BENCHMARKS.md, "Part 4"). None when there is no balloon device."""
    found = None
    for dev in Path("/sys/bus/virtio/devices").glob("*"):
        try:
            if (dev / "device").read_text().strip() != "0x0005":
                continue
            features = (dev / "features").read_text().strip()
        except OSError:
            continue
        found = bool(found) or ((dev / "driver").exists() and len(features) > 5 and features[5] == "1")
    return found


def machine_info(places: Places, argv: list[str], mailbak: dict) -> dict:
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(argv),
        "cores": os.cpu_count(),
        # Other work on the machine skews every number; the load at the start shows it.
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "memory_gib": meminfo_gib(),
        "kernel": platform.release(),
        "dentry_hash_entries": dentry_hash_entries(),
        "balloon_free_page_reporting": free_page_reporting(),
        "python": platform.python_version(),
        "mailbak": mailbak["version"],
        "mailbak_commit": source_commit(),
        "mailbak_source_digest": source_digest(mailbak["engine"]),
        "fs_store": f"{fs_type(places.cache)} at {places.cache}",
        "fs_same_fs_dest": f"{fs_type(places.near)} at {places.near}",
        "fs_cross_device_dest": f"{fs_type(places.far)} at {places.far}",
        "cp": first_line(["cp", "--version"]),
        "rsync": first_line(["rsync", "--version"]) if shutil.which("rsync") else None,
        "engine_warning": stale_engine(mailbak["engine"]),
    }


#: What the report says of a dentry hash size neither the boot log nor this boot's memo has.
DENTRY_UNKNOWN = "unknown (the kernel's boot log no longer holds the line, and no run of this boot remembered it)"


def machine_markdown(info: dict) -> str:
    """The machine facts as a markdown list; the dentry hash size is always named (it moves
    lookup-bound ratios), unknown when it could not be read."""
    shown = {**info, "dentry_hash_entries": info.get("dentry_hash_entries") or DENTRY_UNKNOWN} if "dentry_hash_entries" in info else info
    return "\n".join(f"- {k}: {'`' + v + '`' if k == 'command' else v}" for k, v in shown.items() if v is not None)


# Main --------------------------------------------------------------------------------------


def sizes_and_counts(p: argparse.ArgumentParser, args: argparse.Namespace, rounds: str) -> None:
    """Fills ``args.sizes``, ``args.accounts`` and the round count (the attribute ``rounds``
    names) from --messages or --smoke, as every harness here reads them; errors via ``p``."""
    if args.smoke:
        if args.messages:
            p.error("--smoke chooses its own size; drop --messages")
        args.sizes = [SMOKE_MESSAGES]
        args.accounts = args.accounts or SMOKE_ACCOUNTS
        setattr(args, rounds, getattr(args, rounds) or 1)
    else:
        if not args.messages:
            p.error("--messages is required (or --smoke)")
        try:
            args.sizes = [int(s) for s in args.messages.split(",")]
        except ValueError:
            p.error(f"--messages: not a comma list of integers: {args.messages!r}")
        args.accounts = args.accounts or 50
        setattr(args, rounds, getattr(args, rounds) or 3)
    if any(n < 1 for n in args.sizes) or args.accounts < 1 or getattr(args, rounds) < 1:
        p.error(f"--messages, --accounts and --{rounds} must be at least 1")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", help="messages per store; a comma list runs each size and adds a scaling table")
    p.add_argument("--accounts", type=int, help="accounts per store (default 50; 4 with --smoke)")
    p.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    p.add_argument("--repeat", type=int, help="timed rounds after the warm-up round (default 3; 1 with --smoke)")
    p.add_argument("--dest", choices=("disk", "tmpfs"), default="disk", help="where the store lives; cross-device destinations go to the other one")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write machine info and every raw timing here")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_MESSAGES} messages, one round, in temporary directories: checks that everything runs")
    p.add_argument("--jobs-sweep", action="store_true", help=f"add `mailbak backup --jobs J` for J in {SWEEP_JOBS} to the same-fs group")
    p.add_argument("--only", choices=GROUPS, help="run one group")
    p.add_argument("--baseline", type=Path, metavar="PYTHON", help="also run `mailbak backup`/`verify` with this interpreter (a venv of another commit), as contenders of the same run")
    args = p.parse_args(argv)
    sizes_and_counts(p, args, "repeat")
    if args.jobs_sweep and args.only not in (None, "same-fs"):
        p.error("--jobs-sweep adds to the same-fs group, which --only leaves out")
    return args


def run(args: argparse.Namespace, roots: dict[str, Path]) -> None:
    places = Places.of(roots, args.dest)
    places.create()
    rsync_ok = True
    if args.only in (None, "cross-device"):
        why = ensure_rsync()
        if why:
            log(f"bench: skipping rsync: {why}")
            rsync_ok = False
    mailbak = probe_mailbak()
    info = machine_info(places, [sys.executable, *sys.argv], mailbak)
    if info["engine_warning"]:
        log(f"bench: warning: {info['engine_warning']}")
    groups = build_groups(args.only, places, args.jobs_sweep, rsync_ok, args.baseline)
    log_path = places.near / "last-command.log"
    print(f"## mailbak benchmark\n\n{machine_markdown(info)}\n", flush=True)
    # Paths (--json, --baseline) are written as strings: the report must always serialise.
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report: dict = {"machine": info, "settings": settings, "sizes": []}
    per_size: dict[int, dict[str, list[Result]]] = {}
    for n in args.sizes:
        store, facts = ensure_store(places.cache, n, args.accounts, args.seed)
        per_size[n] = run_size(groups, store, n, args.repeat, places, log_path)
        print(f"## {n:,} messages, {args.accounts} accounts (seed {args.seed})\n")
        floor = rss_floor_kib()
        print(f"Store: {facts['disk_bytes'] / 1e9:.2f} GB on disk, generated in {facts['generation_seconds']} s. {args.repeat} timed round(s) after a warm-up round.")
        print(f"Peak RSS is the largest single process of a contender's tree; ≤{floor / 1024:.0f} marks the harness's floor (the contender used less).\n")
        for group in groups:
            print(f"### {group.name}: {group.title}, {n:,} messages\n\n{group_table(group, per_size[n][group.name], n, floor)}\n", flush=True)
        report["sizes"].append({"messages": n, "store": str(store), "store_facts": facts, "rss_floor_kib": floor, "groups": {g: [r.to_json() for r in rs] for g, rs in per_size[n].items()}})
        if args.json:
            # Written after every size, so that a long run aborted later keeps what it measured.
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    code_changed(mailbak, info)
    if len(args.sizes) > 1:
        print(f"## Scaling: µs per message (median)\n\n{scaling_table(args.sizes, per_size, groups)}\n", flush=True)
    log_path.unlink(missing_ok=True)


def code_changed(mailbak: dict, info: dict) -> str | None:
    """The warning, logged and printed under the tables, when mailbak's code is no longer what
    the run started with (its source digest in ``info``): the tables may mix versions. None when
    it is unchanged."""
    now = source_digest(mailbak["engine"])
    if now == info["mailbak_source_digest"]:
        return None
    note = f"mailbak's code changed during the run (digest now {now}): the tables may mix versions"
    log(f"bench: warning: {note}")
    print(f"**Warning: {note}.**\n")
    return note


def run_harness(run_fn: Callable[[argparse.Namespace, dict[str, Path]], None], args: argparse.Namespace, smoke_prefix: str) -> int:
    """Runs a harness (``run_fn(args, roots)``) and turns its failures into one line and an exit
    status. With --smoke the roots are temporary directories for both locations (one on the
    system temp dir, one on /dev/shm), removed afterwards whatever happens."""
    if args.smoke:
        roots = {"disk": Path(tempfile.mkdtemp(prefix=smoke_prefix)), "tmpfs": Path(tempfile.mkdtemp(prefix=smoke_prefix, dir="/dev/shm"))}
    else:
        roots = ROOTS
    try:
        run_fn(args, roots)
    except HarnessError as e:
        log(f"bench: error: {e}")
        return 1
    except subprocess.CalledProcessError as e:
        log(f"bench: error: {shlex.join(map(str, e.cmd)) if isinstance(e.cmd, list) else e.cmd} exited with status {e.returncode}")
        return 1
    except KeyboardInterrupt:
        log("bench: interrupted")
        return 130
    finally:
        if args.smoke:
            for root in roots.values():
                remove_tree(root)
    return 0


def main(argv: list[str]) -> int:
    return run_harness(run, parse_args(argv), "mailbak-bench-smoke-")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
