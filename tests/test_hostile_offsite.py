"""Off-site against a hostile store owner and a careless configuration (issue 18, findings 1,
13 and 14), with Debian's restic and local restic repositories made here.

mailbak runs as root; the user of the mail server (here uid 65534, nobody) may own TARGET or the
directory TARGET is in, and plant symlinks there while root's restic restores (finding 1). A
restic repository URL with an unencoded space or ``/`` in its password must not come out whole
(finding 13). A failed push must reach monitoring: the ping body says why, the metrics count it
(finding 14).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import NOBODY, free_port, json_lines, make_store, tree_listing
from mailbak import repository
from pausing import PausePoint
from test_offsite import SNAP_A, Target, backup_into, make_target, one_error_line

#: Each drives restic, as test_offsite.py's tests do.
pytestmark = pytest.mark.slow


@dataclass
class Pushed:
    """A local repository with one snapshot, pushed to a local restic repository."""

    repo: Path
    restic: Target


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> Pushed:
    root = tmp_path_factory.mktemp("pushed")
    store = make_store(root / "store", messages=60, accounts=2)
    repo = root / "repo"
    repository.init(repo)
    backup_into(store, repo / SNAP_A)
    # A local restic repository needs no server: make_target reads only "root" (where the
    # template restic repository is made).
    t = make_target("local", root, {"root": root})
    p = t.cli("offsite", "push", "-q", repo, SNAP_A)
    assert p.returncode == 0, p.stdout + p.stderr
    return Pushed(repo, t)


# Finding 1: offsite restore into what the owner controls ---------------------------------------

ATTACK = """
import os, sys
kind, target, elsewhere = sys.argv[1], sys.argv[2], sys.argv[3]
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
try:
    if kind == "inside":
        # TARGET is the owner's (an empty directory of theirs): a symlink in it.
        os.symlink(elsewhere, os.path.join(target, "data"))
    else:
        # TARGET's parent is the owner's: TARGET itself swapped for a symlink.
        if os.path.lexists(target):
            os.rename(target, target + ".moved")
        os.symlink(elsewhere, target)
    print("planted")
except OSError as e:
    print(type(e).__name__)
"""


@pytest.mark.parametrize("kind", ["inside", "parent"])
def test_offsite_restore_target_swapped_by_its_owner(pushed: Pushed, tmp_path: Path, public_dir: Path, kind: str):
    """Between the check of TARGET and restic's start the owner plants a symlink to a root-only
    directory (in TARGET, or as TARGET); root's restic must write nothing there, and what it
    restored must verify clean where it really is."""
    parent = public_dir / "owned"
    parent.mkdir(mode=0o755)
    target = parent / "target"
    if kind == "inside":
        target.mkdir(mode=0o755)
        os.chown(target, NOBODY.pw_uid, NOBODY.pw_gid)
    else:
        os.chown(parent, NOBODY.pw_uid, NOBODY.pw_gid)
    elsewhere = tmp_path / "root-only"
    elsewhere.mkdir(mode=0o700)
    point = PausePoint(public_dir / "pause", "offsite_restore_target_held")
    point.env = {**pushed.restic.env, **point.env}
    proc = point.popen("offsite", "restore", "--json", SNAP_A, target)
    try:
        point.wait_reached(proc)
        attack = subprocess.run([sys.executable, "-c", ATTACK, kind, str(target), str(elsewhere)], capture_output=True, text=True, timeout=60)
    finally:
        point.go()
        out, err = proc.communicate(timeout=300)
    # Nothing of the snapshot, and no mode change, outside.
    assert os.listdir(elsewhere) == [], (attack.stdout, out, err)
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o700
    assert proc.returncode == 0, out + err
    summary = json_lines(out)[-1]
    assert summary["status"] == "clean" and summary["verify"]["errors"] == 0, summary
    expected = tree_listing(pushed.repo / SNAP_A)
    if kind == "inside":
        # TARGET was root's while restic wrote into it: the owner could plant nothing.
        assert attack.stdout.strip() == "PermissionError", attack.stdout + attack.stderr
        assert tree_listing(target) == expected
        st = target.lstat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o755)
    else:
        # The owner could move TARGET away: restic followed the directory, not its name.
        assert attack.stdout.strip() == "planted", attack.stdout + attack.stderr
        moved = parent / "target.moved"
        assert tree_listing(moved) == expected
        assert target.is_symlink()


# Finding 13: a repository URL restic cannot parse is repeated whole ----------------------------

#: A password in a rest: URL, unencoded: restic's URL parser fails and quotes the whole URL
#: (with a ``/``, it also quotes the part before the ``/`` as a port).
URL_PASSWORD = "Tr0ub4dor{}horse"


@pytest.mark.parametrize("sep", [" ", "/"])
@pytest.mark.parametrize("how", ["option", "variable", "file"])
def test_repository_url_with_an_unencoded_password_is_never_repeated(pushed: Pushed, tmp_path: Path, sep: str, how: str):
    password = URL_PASSWORD.format(sep)
    url = f"rest:https://mailbak:{password}@127.0.0.1:{free_port()}/repo"
    env = {k: v for k, v in pushed.restic.env.items() if not k.startswith("RESTIC_REPOSITORY")}
    args: list[str | Path] = []
    if how == "option":
        args = ["--restic-repo", url]
    elif how == "variable":
        env["RESTIC_REPOSITORY"] = url
    else:
        (tmp_path / "repository").write_text(url + "\n")
        env["RESTIC_REPOSITORY_FILE"] = str(tmp_path / "repository")
    for command in (["push", pushed.repo], ["push", "--json", pushed.repo], ["restore", SNAP_A, tmp_path / "back"]):
        p = pushed.restic.cli("offsite", *command, *args, env=env)
        assert p.returncode == 1, p.stdout + p.stderr
        line = one_error_line(p.stderr)
        # Still says what failed, and where, without the credentials.
        assert "parsing repository location failed" in line and "127.0.0.1" in line, line
        for secret in (password, "Tr0ub4dor", "horse"):
            assert secret not in p.stdout + p.stderr, (command, p.stdout + p.stderr)


# Finding 14: a failed push reaches monitoring --------------------------------------------------


def test_failed_push_is_counted_and_pinged_with_its_reason(pushed: Pushed, tmp_path: Path):
    from prometheus_client.parser import text_string_to_metric_families
    from test_monitor import SECRET, PingServer

    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    prom = tmp_path / "offsite.prom"
    pings = PingServer()
    try:
        p = pushed.restic.cli("offsite", "push", "--password-file", wrong, "--metrics-file", prom, "--ping-url", pings.url, pushed.repo)
        j = pushed.restic.cli("offsite", "push", "--json", "--password-file", wrong, pushed.repo)
    finally:
        pings.close()
    assert p.returncode == 1, p.stdout + p.stderr
    assert "wrong password" in one_error_line(p.stderr)
    # People see the reason once, as before.
    assert p.stderr.count("wrong password") == 1, p.stderr
    assert [(m, path) for m, path, _ in pings.requests] == [("GET", f"/ping/{SECRET}/start"), ("POST", f"/ping/{SECRET}/1")]
    assert b"wrong password" in pings.requests[-1][2], pings.requests[-1][2]
    value = {f.name: s.value for f in text_string_to_metric_families(prom.read_text()) for s in f.samples if not s.labels.get("kind")}
    assert (value["mailbak_success"], value["mailbak_exit_status"], value["mailbak_errors"]) == (0, 1, 1), value
    # --json: one error event, as before.
    assert j.returncode == 1, j.stdout + j.stderr
    errors = [o for o in json_lines(j.stdout) if o["message_type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "restic" and "wrong password" in errors[0]["cause"], j.stdout


def test_a_symlinked_repository_file_is_still_redacted(tmp_path):
    """RESTIC_REPOSITORY_FILE is the operator's setting, often a symlink (systemd credentials,
    /etc alternatives): restic follows it, so redaction must read it too, or its credentials
    would be repeated whole. A FIFO there is still never waited for."""
    from mailbak.restic import configured_repos, redact

    secret = "pa ss/word"
    real = tmp_path / "repo-real"
    real.write_text(f"rest:http://user:{secret}@127.0.0.1:1/repo/\n")
    link = tmp_path / "repo-file"
    link.symlink_to(real)
    repos = configured_repos({"RESTIC_REPOSITORY_FILE": str(link)})
    assert repos == (f"rest:http://user:{secret}@127.0.0.1:1/repo/",)
    line = redact(f'Fatal: invalid repository: parse "http://user:{secret}@127.0.0.1:1/repo/"', repos)
    assert "pa ss" not in line and "word" not in line, line
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert configured_repos({"RESTIC_REPOSITORY_FILE": str(fifo)}) == ()
