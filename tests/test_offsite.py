"""Off-site copies through restic (docs/OFFSITE.md), against real components only: Debian's
restic, a local restic repository, a real OpenSSH server (SFTP) and moto's S3 server, each
started here on 127.0.0.1 on a free port and stopped here.

The local snapshots (a repository with two snapshots of a 4000-message store, the second after
deliveries and expunges) are made once per module; each test gets restic repositories of its own
on the servers the module shares.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import clock_env, free_port, json_lines, make_store, manifest_of, start_times, tree_listing
from mailbak import repository
from mailbak.offsite import RESTIC_UNLIMITED, forget_args
from mailbak.restic import ResticConfig, redact
from mailbak.retention import Duration, Policy
from mailbak.store import Store

#: restic's key derivation per call makes these the suite's slowest (about 100 s in all).
pytestmark = pytest.mark.slow

RESTIC = shutil.which("restic")
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
#: The password of every restic repository here; it must never show up in argv or output.
PASSWORD = "correct-horse-battery-staple-7f3a"
SNAP_A, SNAP_B = "2026-11-25T020000Z", "2026-11-26T020000Z"
#: Messages in the store: the files a backup copies (config, databases: 21) must stay under
#: 1 % of the files for the second push to show 99 % unmodified.
MESSAGES = 4000


@pytest.fixture(scope="module", autouse=True)
def tools() -> None:
    """restic and sshd are part of the setup (scripts/system-deps): missing, they fail the
    tests loudly rather than skip them."""
    assert RESTIC is not None and SSHD is not None, "restic and openssh-server are installed by `make setup` (scripts/system-deps)"


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# Servers -----------------------------------------------------------------------------------------


class Sshd:
    """A real sshd on 127.0.0.1:port with throwaway host and user keys, root login by key only."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.key = root / "id_ed25519"
        host_key = root / "ssh_host_ed25519_key"
        for k in (self.key, host_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
        (root / "authorized_keys").write_text((root / "id_ed25519.pub").read_text())
        self.config = root / "sshd_config"
        self.config.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {host_key}\nPidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nSubsystem sftp internal-sftp\n"
        )
        # sshd refuses to start without its privilege separation directory (the package's
        # service unit makes it; nothing does here).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        assert SSHD is not None
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"))
        wait_port(self.port, self.proc, "sshd")

    def kill_all(self) -> list[int]:
        """Kills sshd and every session it serves (a connection lives in a child of its own)."""
        assert self.proc is not None
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        return pids

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill_all()

    def ssh_command(self) -> str:
        return f"ssh -p {self.port} -i {self.key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR root@127.0.0.1 -s sftp"


class MotoS3:
    """moto's S3 server on 127.0.0.1:port."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(root / "moto.log", "ab"))
        wait_port(self.port, self.proc, "moto_server", timeout=60)
        self.env = {"AWS_ACCESS_KEY_ID": "mailbak-test-key", "AWS_SECRET_ACCESS_KEY": "mailbak-test-secret-91c2", "AWS_DEFAULT_REGION": "us-east-1"}
        self.bucket = "mailbak-offsite"
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.url, aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        s3.create_bucket(Bucket=self.bucket)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("servers")
    sshd = Sshd(root)
    try:
        s3 = MotoS3(root)
    except BaseException:
        sshd.stop()
        raise
    yield {"sftp": sshd, "s3": s3, "root": root}
    sshd.stop()
    s3.stop()


# Local snapshots -----------------------------------------------------------------------------------


@dataclass
class Local:
    root: Path
    store: Path
    repo: Path
    #: Files of the store changed between the snapshots: delivered and expunged.
    delivered: int = 0
    expunged: int = 0


def churn(store: Path, deliveries: int, expunges: int) -> tuple[int, int]:
    """Deliveries and expunges between two snapshots, through the writer library."""
    with Store.open(store, durable=False) as s:
        name = s.account_names()[0]
        acc = s.account(name)
        inbox = next(iter(acc.mailboxes()))
        for i in range(deliveries):
            acc.deliver(inbox, b"Subject: new %d\r\n\r\n" % i + os.urandom(2000))
        ids = sorted(acc.messages())[:expunges]
        acc.expunge(ids)
    return deliveries, len(ids)


def backup_into(store: Path, dest: Path, clock: float | None = None) -> None:
    """A quiet backup of ``store`` into ``dest`` that must succeed (started at ``clock``)."""
    p = subprocess.run([sys.executable, "-m", "mailbak", "backup", "-q", str(store), str(dest)], capture_output=True, text=True, timeout=300, env=clock_env(clock, dict(os.environ)))
    assert p.returncode == 0, p.stdout + p.stderr


def two_snapshots(root: Path, messages: int) -> Local:
    """A repository with two complete snapshots: A, then B after deliveries and expunges."""
    store = make_store(root / "store", messages=messages, accounts=3)
    repo = root / "repo"
    repository.init(repo)
    # restic's snapshot times are the snapshots' start times, to the second: keep them apart.
    start_a, start_b = start_times(2)
    backup_into(store, repo / SNAP_A, clock=start_a)
    delivered, expunged = churn(store, deliveries=8, expunges=8)
    backup_into(store, repo / SNAP_B, clock=start_b)
    return Local(root, store, repo, delivered, expunged)


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Local:
    """Two snapshots of a store big enough for the 99 % unmodified of the issue."""
    return two_snapshots(tmp_path_factory.mktemp("local"), MESSAGES)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Local:
    """Two snapshots of a small store, for the failure tests (quick to push)."""
    return two_snapshots(tmp_path_factory.mktemp("small"), 300)


def incremental(summary: dict, first: dict) -> None:
    """The push of ``summary`` was made against the restic snapshot of ``first`` and read
    only what changed."""
    assert summary["parent"].startswith(first["restic_snapshot"]), (first, summary)
    assert summary["files_unmodified"] > 5 * (summary["files_new"] + summary["files_changed"]), summary


# A restic repository on each backend ----------------------------------------------------------------


@dataclass
class Target:
    """A restic repository of one test: how mailbak and restic reach it."""

    kind: str
    env: dict[str, str]
    options: list[str] = field(default_factory=list)

    def cli(self, *args, env: dict[str, str] | None = None, timeout: float = 300, popen: bool = False):
        argv = [sys.executable, "-m", "mailbak", *map(str, args)]
        cmd = args[1] if len(args) > 1 else ""
        if args and args[0] == "offsite" and cmd in ("push", "list", "restore", "prune"):
            argv += [a for o in self.options for a in ("-o", o)]
        e = env if env is not None else self.env
        if popen:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=e)

    def restic(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [RESTIC, *[a for o in self.options for a in ("-o", o)], *args]
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, env=self.env)
        if check:
            assert p.returncode == 0, p.stdout + p.stderr
        return p

    def snapshots(self) -> list[dict]:
        return json.loads(self.restic("snapshots", "--json", "--tag", "mailbak").stdout) or []


def make_target(kind: str, root: Path, servers) -> Target:
    assert RESTIC is not None
    pw = root / "restic-password"
    pw.write_text(PASSWORD + "\n")
    env = {**os.environ, "COLUMNS": "200", "RESTIC_PASSWORD_FILE": str(pw), "RESTIC_CACHE_DIR": str(root / "restic-cache")}
    for v in ("RESTIC_PASSWORD", "RESTIC_PASSWORD_COMMAND", "RESTIC_REPOSITORY_FILE"):
        env.pop(v, None)
    options: list[str] = []
    if kind == "local":
        env["RESTIC_REPOSITORY"] = str(root / "restic-repo")
    elif kind == "sftp":
        sshd = servers["sftp"]
        env["RESTIC_REPOSITORY"] = f"sftp:root@127.0.0.1:{root / 'sftp-repo'}"
        options = [f"sftp.command={sshd.ssh_command()}"]
    else:
        s3 = servers["s3"]
        env.update(s3.env)
        env["RESTIC_REPOSITORY"] = f"s3:{s3.url}/{s3.bucket}/{root.name}"
    t = Target(kind, env, options)
    if kind == "s3":
        t.restic("init")
    else:
        # restic init calibrates its key derivation (a second of CPU): the local and SFTP
        # repositories of a test are copies of one made once.
        shutil.copytree(empty_restic_repo(servers), root / ("restic-repo" if kind == "local" else "sftp-repo"))
    return t


def empty_restic_repo(servers) -> Path:
    template = servers["root"] / "empty-restic-repo"
    if not template.exists():
        env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": str(template), "RESTIC_CACHE_DIR": str(servers["root"] / "restic-cache")}
        p = subprocess.run([RESTIC, "init"], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60)
        assert p.returncode == 0, p.stderr
    return template


BACKENDS = ["local", "sftp", "s3"]


@pytest.fixture
def target(request, tmp_path, servers) -> Target:
    return make_target(request.param, tmp_path, servers)


def push(t: Target, local: Local, *args: str) -> dict:
    """A push that must succeed; returns its JSON summary."""
    p = t.cli("offsite", "push", "--json", local.repo, *args)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = [o for o in json_lines(p.stdout) if o["message_type"] == "summary"]
    assert len(summary) == 1, p.stdout
    assert PASSWORD not in p.stdout + p.stderr
    return summary[0]


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("mailbak: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


# The end-to-end scenario, per backend -----------------------------------------------------------------


@pytest.mark.parametrize("target", BACKENDS, indirect=True)
def test_push_twice_incremental_check_and_restore_verifies(target: Target, local: Local, tmp_path: Path):
    before = tree_listing(local.repo)
    first = push(target, local, SNAP_A)
    assert first["pushed"] and first["parent"] is None and first["files_new"] > MESSAGES * 0.9

    # Default: the newest complete snapshot, B, against A's restic snapshot.
    second = push(target, local)
    assert second["snapshot"] == SNAP_B and second["pushed"]
    assert second["parent"].startswith(first["restic_snapshot"])
    processed = second["files_new"] + second["files_changed"] + second["files_unmodified"]
    # B's digest files written anew (its changed shards and its list of plain files) are B's
    # own new content, like its databases; of the rest, 99 % are not even read.
    digests_written = manifest_of(local.repo / SNAP_B)["digests"]["shards_written"] + 1
    assert second["files_unmodified"] / (processed - digests_written) >= 0.99, second
    assert second["files_new"] == local.delivered
    # Only the delivered messages and the copied databases are sent.
    assert second["bytes_added"] < first["bytes_added"] * 0.2, (first, second)

    target.restic("check")

    # restic's tags are the only record of what is off-site: list reads them back.
    listing = target.cli("offsite", "list", "--json", local.repo)
    assert listing.returncode == 0, listing.stderr
    rows = {o["name"]: o for o in json_lines(listing.stdout)}
    assert [[s["restic_snapshot"][:8] for s in rows[n]["offsite"]] for n in (SNAP_A, SNAP_B)] == [[first["restic_snapshot"][:8]], [second["restic_snapshot"][:8]]]

    out = tmp_path / "restored"
    r = target.cli("offsite", "restore", "--json", second["restic_snapshot"], out)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json_lines(r.stdout)[-1]
    assert summary["status"] == "clean" and summary["verify"]["errors"] == 0 and summary["snapshot"] == SNAP_B
    assert tree_listing(out) == tree_listing(local.repo / SNAP_B)
    # Nothing local changed.
    assert tree_listing(local.repo) == before


def test_already_offsite_does_nothing(small: Local, tmp_path: Path, servers):
    t = make_target("local", tmp_path, servers)
    first = push(t, small, SNAP_A)
    again = t.cli("offsite", "push", small.repo, SNAP_A)
    assert again.returncode == 0, again.stderr
    assert f"{SNAP_A}: already off-site as restic snapshot {first['restic_snapshot'][:8]}" in again.stderr
    assert "nothing pushed" in again.stdout
    assert len(t.snapshots()) == 1


def test_restored_backup_is_accepted_by_mailbak_restore(small: Local, tmp_path: Path, servers):
    local = small
    t = make_target("local", tmp_path, servers)
    push(t, local, SNAP_B)
    out = tmp_path / "back"
    r = t.cli("offsite", "restore", SNAP_B, out)  # by the local snapshot's name
    assert r.returncode == 0, r.stdout + r.stderr
    store = tmp_path / "store"
    p = t.cli("restore", out, store)
    assert p.returncode == 0, p.stdout + p.stderr


# Failures -----------------------------------------------------------------------------------------------


def test_wrong_password_one_line_nothing_changed_next_push_incremental(small: Local, tmp_path: Path, servers):
    local = small
    t = make_target("local", tmp_path, servers)
    first = push(t, local, SNAP_A)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    before = tree_listing(local.repo)
    p = t.cli("offsite", "push", local.repo, SNAP_B, "--password-file", wrong)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "wrong password" in one_error_line(p.stderr)
    assert tree_listing(local.repo) == before
    assert len(t.snapshots()) == 1
    incremental(push(t, local, SNAP_B), first)


def test_server_stopped_mid_push_then_next_push_incremental(small: Local, tmp_path: Path, servers):
    local = small
    sshd: Sshd = servers["sftp"]
    t = make_target("sftp", tmp_path, servers)
    first = push(t, local, SNAP_A)
    before = tree_listing(local.repo)
    with slow_to_read(local, SNAP_B):
        proc, pause_dir, restic = push_paused(t, local, tmp_path)
        try:
            argv = Path(f"/proc/{restic}/cmdline").read_bytes().split(b"\0")
            assert b"--parent" in argv and b"--ignore-ctime" in argv
            assert not any(PASSWORD.encode() in a for a in argv)
            # restic is reading the snapshot, whose sparse file keeps it busy for minutes:
            # frozen, it is still mid-push when the server goes away.
            freeze(restic)
            killed = sshd.kill_all()
            assert len(killed) >= 2, "restic's sftp session was not running"
            os.kill(restic, signal.SIGCONT)
            (pause_dir / "offsite_mid_push.go").touch()
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
            if sshd.proc is None or sshd.proc.poll() is not None:
                sshd.start()
    assert tree_listing(local.repo) == before
    assert proc.returncode == 1, out + err
    line = one_error_line(err)
    assert "restic backup" in line and "nothing was stored off-site" in line
    assert [s["short_id"] for s in t.snapshots()] == [first["restic_snapshot"][:8]]
    incremental(push(t, local, SNAP_B), first)
    # The killed restic left its lock behind, which stops restic's exclusive commands; offsite
    # prune removes it as stale (its process is gone) before it forgets.
    assert t.restic("check", check=False).returncode != 0
    p = t.cli("offsite", "prune", local.repo, "--keep-last", "10")
    assert p.returncode == 0, p.stdout + p.stderr
    t.restic("check")


def push_paused(t: Target, local: Local, tmp_path: Path) -> tuple[subprocess.Popen, Path, int]:
    """Starts ``offsite push SNAP_B`` with the test pause at restic's first progress line;
    returns once it is there: the process, the pause directory, and restic's PID."""
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    env = {**t.env, "MAILBAK_TEST_PAUSE": "offsite_mid_push", "MAILBAK_TEST_PAUSE_DIR": str(pause_dir)}
    proc = t.cli("offsite", "push", local.repo, SNAP_B, env=env, popen=True)
    try:
        wait_reached(proc, pause_dir / "offsite_mid_push.reached")
        restic = [p for p in descendants(proc.pid) if comm(p) == "restic"]
        assert len(restic) == 1
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, pause_dir, restic[0]


def freeze(pid: int) -> None:
    """Stops process ``pid`` (SIGSTOP) and waits until every thread of it is stopped: a Go
    thread still running would take a later signal into the runtime, where it waits unseen
    until the process runs again."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 30
    while not all_stopped(pid):
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.01)


@contextlib.contextmanager
def slow_to_read(local: Local, snapshot: str) -> Iterator[None]:
    """A sparse file of 64 GiB in the snapshot while the block runs: restic reads and hashes
    it for minutes, so a push paused at restic's first progress line is far from committing
    when the test acts on it. (Without it, restic could finish the small snapshot on a loaded
    machine before the test has frozen it.) Removed before the test's next push."""
    big = local.repo / snapshot / "data" / "slow-to-read"
    with open(big, "xb") as f:
        f.truncate(64 << 30)
    try:
        yield
    finally:
        big.unlink()


def wait_reached(proc: subprocess.Popen, flag: Path) -> None:
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"the push never reached {flag.name}"
        time.sleep(0.02)


def all_stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (state T in /proc/PID/task/*/stat)."""
    return all(state(f"{pid}/task/{tid}") == "T" for tid in os.listdir(f"/proc/{pid}/task"))


def pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` is pending for process ``pid`` (from /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(m & (1 << (sig - 1)) for m in masks)


def test_interrupted_push_stops_restic_and_exits_130(small: Local, tmp_path: Path, servers):
    local = small
    t = make_target("local", tmp_path, servers)
    first = push(t, local, SNAP_A)
    with slow_to_read(local, SNAP_B):
        proc, _, restic = push_paused(t, local, tmp_path)
        try:
            freeze(restic)  # it stays mid-push until mailbak stops it
            proc.send_signal(signal.SIGTERM)
            # mailbak passes the stop on as SIGINT (restic then removes its lock); let restic
            # run once it is pending.
            deadline = time.monotonic() + 30
            while not pending(restic, signal.SIGINT):
                assert time.monotonic() < deadline, "mailbak never sent restic SIGINT"
                time.sleep(0.02)
            os.kill(restic, signal.SIGCONT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, out + err
    assert "interrupted" in err and "nothing was stored off-site" in err
    assert not os.path.exists(f"/proc/{restic}") or comm(restic) != "restic"
    assert len(t.snapshots()) == 1
    t.restic("check")  # restic stopped cleanly: no lock left behind
    incremental(push(t, local, SNAP_B), first)


def test_push_stopped_after_restic_finished_says_it_is_off_site(small: Local, tmp_path: Path, servers):
    """A stop that comes after restic has committed and reported its snapshot (while mailbak had
    not read the report yet) exits 130, and says the snapshot is off-site: it is, and the next
    push finds it there."""
    local = small
    t = make_target("local", tmp_path, servers)
    push(t, local, SNAP_A)
    proc, _, restic = push_paused(t, local, tmp_path)
    try:
        # mailbak, paused, reads nothing; restic ends anyway (what is left of its output fits the
        # pipe) and stays a zombie until mailbak waits for it.
        deadline = time.monotonic() + 60
        while state(restic) != "Z":
            assert time.monotonic() < deadline, "restic did not finish"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    snaps = t.snapshots()
    assert len(snaps) == 2
    new = [s for s in snaps if f"mailbak-snapshot={SNAP_B}" in s.get("tags", [])]
    assert len(new) == 1, snaps
    assert proc.returncode == 130, out + err
    said = [ln for ln in err.splitlines() if ln.startswith("mailbak: interrupted")]
    assert len(said) == 1, err
    assert f"restic had finished before it was stopped: {SNAP_B} is off-site as restic snapshot {new[0]['short_id']}" in said[0], err
    assert "nothing was stored" not in err and "Traceback" not in err
    again = t.cli("offsite", "push", local.repo, SNAP_B)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already off-site" in again.stdout + again.stderr
    assert len(t.snapshots()) == 2


def state(pid: int | str) -> str:
    """The state letter (R, S, T, Z...) of process ``pid``, or of a thread ("PID/task/TID"), from
    its /proc stat (the field after the name, which may hold spaces and parentheses)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def test_restic_missing_exits_2_with_hint(small: Local, tmp_path: Path, servers):
    local = small
    t = make_target("local", tmp_path, servers)
    first = push(t, local, SNAP_A)
    no_restic = {**t.env, "PATH": str(tmp_path / "empty-bin")}
    for args in (("push", local.repo), ("restore", "latest", tmp_path / "x")):
        p = t.cli("offsite", *args, env=no_restic)
        assert p.returncode == 2, p.stdout + p.stderr
        line = one_error_line(p.stderr)
        assert "restic not found" in line and "apt-get install restic" in line
    assert not (tmp_path / "x").exists()
    assert len(t.snapshots()) == 1
    incremental(push(t, local, SNAP_B), first)


def test_full_target_on_restore_exits_1(small: Local, tmp_path: Path, servers):
    local = small
    t = make_target("local", tmp_path, servers)
    push(t, local, SNAP_B)
    mnt = tmp_path / "small"
    mnt.mkdir()
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert m.returncode == 0, f"this test mounts a 1 MiB tmpfs as root: {m.stderr}"
    try:
        p = t.cli("offsite", "restore", SNAP_B, mnt / "target")
        assert p.returncode == 1, p.stdout + p.stderr
        line = one_error_line(p.stderr)
        assert "no space left on device" in line and "is incomplete" in line
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    # The same restore into room enough works.
    ok = t.cli("offsite", "restore", SNAP_B, tmp_path / "roomy")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_only_complete_snapshots_are_pushed(small: Local, tmp_path: Path, servers):
    local = small
    t = make_target("local", tmp_path, servers)
    repo = tmp_path / "repo"
    repository.init(repo)
    shutil.copytree(local.repo / SNAP_A, repo / SNAP_A, symlinks=True)
    doc = json.loads((local.repo / SNAP_A / "mailbak.json").read_text())
    for name, status in (("2026-11-27T020000Z", "failed"), ("2026-11-28T020000Z", "running")):
        (repo / name).mkdir()
        later = doc["started"].replace(doc["started"][:4], str(int(doc["started"][:4]) + 1))
        (repo / name / "mailbak.json").write_text(json.dumps({**doc, "status": status, "started": later}))
    for name, why in (("2026-11-27T020000Z", "snapshot is failed"), ("2026-11-28T020000Z", "snapshot is incomplete")):
        p = t.cli("offsite", "push", repo, name)
        assert p.returncode == 2, p.stdout + p.stderr
        line = one_error_line(p.stderr)
        assert why in line and "only complete snapshots" in line
    assert t.snapshots() == []
    # The default is the newest complete one, though newer ones exist.
    assert push(t, Local(tmp_path, local.store, repo))["snapshot"] == SNAP_A


def test_bad_configuration_is_usage(small: Local, tmp_path: Path, servers):
    local = small
    t = make_target("local", tmp_path, servers)
    env = {k: v for k, v in t.env.items() if not k.startswith("RESTIC_REPOSITORY")}
    p = t.cli("offsite", "push", local.repo, env=env)
    assert p.returncode == 2 and "no restic repository" in one_error_line(p.stderr)
    p = t.cli("offsite", "push", local.repo, "--password-file", tmp_path / "absent")
    assert p.returncode == 2 and "password file" in one_error_line(p.stderr)
    p = t.cli("offsite", "push", tmp_path / "not-a-repo")
    assert p.returncode == 2 and "no such repository" in one_error_line(p.stderr)
    # A restic repository never initialised: restic's failure, with the hint.
    p = t.cli("offsite", "push", local.repo, "--restic-repo", tmp_path / "no-restic-repo-here")
    assert p.returncode == 1 and "restic init" in one_error_line(p.stderr)


# Retention ----------------------------------------------------------------------------------------------


def test_prune_keeps_what_mailbak_prune_keeps(small: Local, tmp_path: Path, servers):
    local = small
    t = make_target("local", tmp_path, servers)
    push(t, local, SNAP_A)
    push(t, local, SNAP_B)
    p = t.cli("offsite", "prune", local.repo, "--keep-within", "2w")
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(t.snapshots()) == 2
    dry = t.cli("offsite", "prune", "--json", local.repo, "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    facts = json_lines(dry.stdout)[-1]
    assert [s["snapshot"] for s in facts["removed"]] == [SNAP_A] and len(t.snapshots()) == 2
    p = t.cli("offsite", "prune", "--json", local.repo, "--keep-last", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    facts = json_lines(p.stdout)[-1]
    assert [s["snapshot"] for s in facts["kept"]] == [SNAP_B] and facts["kept"][0]["reasons"] == ["last snapshot"]
    assert [next(tag for tag in s["tags"] if tag.startswith("mailbak-snapshot=")) for s in t.snapshots()] == [f"mailbak-snapshot={SNAP_B}"]
    t.restic("check")
    for bad in (("--keep-daily", "x"), ("--keep-within", "3q")):
        p = t.cli("offsite", "prune", local.repo, *bad)
        assert p.returncode == 2, p.stdout + p.stderr
    p = t.cli("offsite", "prune", local.repo)
    assert p.returncode == 2 and "empty policy" in one_error_line(p.stderr)


def test_forget_args_map_mailbak_rules_to_restic():
    assert forget_args(Policy(keep_daily=7, keep_weekly=4, keep_within=Duration(years=1, weeks=2, days=1))) == ["--keep-daily", "7", "--keep-weekly", "4", "--keep-within", "1y15d"]
    assert forget_args(Policy(keep_last=-1)) == ["--keep-last", str(RESTIC_UNLIMITED)]


def test_secrets_stay_out_of_argv_and_output(tmp_path: Path):
    (tmp_path / "pw").write_text("x\n")
    env = ResticConfig(repo="rest:https://user:s3cret@host/repo", password_file=tmp_path / "pw").environment({"RESTIC_PASSWORD": "x"})
    assert env["RESTIC_REPOSITORY"] == "rest:https://user:s3cret@host/repo" and "RESTIC_PASSWORD" not in env
    assert redact("Fatal: unable to open rest:https://user:s3cret@host/repo: 401") == "Fatal: unable to open rest:https://***@host/repo: 401"


def test_python_api(small: Local, tmp_path: Path, servers, monkeypatch):
    from mailbak.api import offsite_list, offsite_prune, offsite_push, offsite_restore
    from mailbak.errors import UsageError
    from mailbak.restic import ResticError

    t = make_target("local", tmp_path, servers)
    for v in ("RESTIC_REPOSITORY", "RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD", "RESTIC_PASSWORD_COMMAND"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("RESTIC_CACHE_DIR", t.env["RESTIC_CACHE_DIR"])
    where = {"restic_repo": t.env["RESTIC_REPOSITORY"], "password_file": t.env["RESTIC_PASSWORD_FILE"]}
    events: list[dict] = []
    first = offsite_push(small.repo, SNAP_A, on_event=events.append, **where)
    assert first.ok and first.pushed and first.parent is None and first.files_new > 0
    assert events[-1]["message_type"] == "summary" and events[-1]["restic_snapshot"] == first.restic_snapshot
    second = offsite_push(small.repo, **where)
    assert second.snapshot == SNAP_B and second.parent and second.parent.startswith(first.restic_snapshot) and second.unmodified_share > 0.8
    assert not offsite_push(small.repo, SNAP_B, **where).pushed
    entries = {e.name: e for e in offsite_list(small.repo, **where)}
    assert [len(entries[n].offsite) for n in (SNAP_A, SNAP_B)] == [1, 1]
    restored = offsite_restore(SNAP_B, tmp_path / "back", **where)
    assert restored.ok and restored.verify["errors"] == 0
    pruned = offsite_prune(small.repo, keep_last=1, **where)
    assert [s.snapshot for s in pruned.removed] == [SNAP_A]
    with pytest.raises(UsageError):
        offsite_prune(small.repo, keep_within="3q", **where)
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    with pytest.raises(ResticError, match="wrong password"):
        offsite_push(small.repo, **{**where, "password_file": wrong})


AS_NOBODY = """
import os, sys
import click, json, subprocess, threading, signal, shutil, tempfile, re, io
import mailbak.cli, mailbak.offsite, mailbak.restic, mailbak.report, mailbak.runner, mailbak.monitor, mailbak.repository, mailbak.retention, mailbak.errors
import mailbak.destdir, mailbak.manifest, mailbak.fsio, mailbak.text, mailbak.testpause
import _strptime, datetime  # noqa: F401 (stdlib modules are unreadable once privileges are dropped)
datetime.datetime.strptime("2026", "%Y")
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
mailbak.cli.main(sys.argv[1:], prog_name="mailbak")
"""


def test_unreadable_file_fails_the_push_and_leaves_nothing_offsite(small: Local, public_dir: Path):
    # A snapshot file restic cannot read (the push runs as nobody, the file is mode 000): restic
    # makes its snapshot without the file and exits 3; mailbak reports the file, removes that
    # snapshot (the next push must not take it for done) and exits 1.
    repo = public_dir / "repo"
    repository.init(repo)
    shutil.copytree(small.repo / SNAP_A, repo / SNAP_A, symlinks=True)
    victim = next(p for p in sorted((repo / SNAP_A / "data" / "accounts").rglob("*")) if p.is_file() and p.parent.parent.name == "msg")
    env = {**os.environ, "RESTIC_REPOSITORY": str(public_dir / "restic"), "RESTIC_PASSWORD_FILE": str(public_dir / "pw"), "RESTIC_CACHE_DIR": str(public_dir / "cache"), "HOME": str(public_dir)}
    (public_dir / "pw").write_text(PASSWORD + "\n")
    subprocess.run([RESTIC, "init"], env=env, check=True, capture_output=True)
    subprocess.run(["chown", "-R", "65534:65534", str(public_dir)], check=True)
    victim.chmod(0)
    p = subprocess.run([sys.executable, "-c", AS_NOBODY, "offsite", "push", str(repo)], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"error: {victim.relative_to(repo / SNAP_A)}: archival: open " in p.stderr and "Permission denied" in p.stderr, p.stderr
    assert "restic could not read some files; its snapshot is removed" in p.stderr
    snaps = subprocess.run([RESTIC, "snapshots", "--json"], env=env, capture_output=True, text=True, check=True)
    assert json.loads(snaps.stdout) in ([], None)


def test_push_writes_metrics(small: Local, tmp_path: Path, servers):
    from mailbak.monitor import METRICS
    from prometheus_client.parser import text_string_to_metric_families

    t = make_target("local", tmp_path, servers)
    prom = tmp_path / "offsite.prom"
    summary = push(t, small, SNAP_A, "--metrics-file", str(prom))
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert {n: f.documentation for n, f in families.items()} == {n: METRICS[n] for n in families}
    value = {(f.name, s.labels.get("kind")): s.value for f in families.values() for s in f.samples}
    assert value[("mailbak_success", None)] == 1
    assert value[("mailbak_files", "new")] == summary["files_new"] > 0
    assert value[("mailbak_files", "unmodified")] == summary["files_unmodified"]
    assert value[("mailbak_bytes_copied", None)] == summary["bytes_added"] > 0
    assert {s.labels["command"] for f in families.values() for s in f.samples} == {"offsite-push"}
