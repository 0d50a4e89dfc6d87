"""Operating mailbak: the shipped systemd units (checked by systemd-analyze verify, and their
command line run for real), shell completion, and --version."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI_ENV, clock_env, make_store, run_cli, start_times
from mailbak import _engine

#: The installed `mailbak` script (completion is keyed to the program's name).
MAILBAK = Path(sys.executable).with_name("mailbak")


def printed(name: str) -> str:
    p = run_cli("systemd", "--print", name)
    assert p.returncode == 0, p.stderr
    return p.stdout


def analyze(unit_dir: Path, *units: str) -> subprocess.CompletedProcess:
    assert shutil.which("systemd-analyze"), "scripts/system-deps installs systemd (make setup)"
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *(str(unit_dir / u) for u in units)], capture_output=True, text=True, timeout=60, cwd=unit_dir)


UNITS = ("mailbak-backup@.service", "mailbak-backup@.timer", "mailbak-prune@.service", "mailbak-prune@.timer", "mailbak-check@.service", "mailbak-check@.timer")


def test_units_pass_systemd_analyze_verify(tmp_path):
    names = run_cli("systemd").stdout.split()
    assert {*UNITS, "example.env"} <= set(names)
    for name in UNITS:
        (tmp_path / name).write_text(printed(name))
    p = analyze(tmp_path, *(u.replace("@.", "@mox.") for u in UNITS))
    assert p.returncode == 0 and p.stderr == "" and p.stdout == "", p.stderr
    for kind in ("backup", "prune", "check"):
        unit = (tmp_path / f"mailbak-{kind}@.service").read_text()
        timer = (tmp_path / f"mailbak-{kind}@.timer").read_text()
        for setting in ("Persistent=true", "RandomizedDelaySec=", "OnCalendar="):
            assert setting in timer
        for setting in ("ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes", "IOSchedulingClass=idle", "Nice=", "ReadWritePaths=/srv\n"):
            assert setting in unit
    assert "EXDEV" in (tmp_path / "mailbak-backup@.service").read_text()
    assert "After=local-fs.target network-online.target mailbak-backup@%i.service" in (tmp_path / "mailbak-prune@.service").read_text()

    # The check is live: a setting systemd does not know, or a bad schedule, fails it.
    timer = (tmp_path / "mailbak-backup@.timer").read_text()
    unit = (tmp_path / "mailbak-backup@.service").read_text()
    (tmp_path / "mailbak-backup@.timer").write_text(timer.replace("OnCalendar=*-*-* 03:00:00", "OnCalendar=at three"))
    assert analyze(tmp_path, "mailbak-backup@mox.timer").returncode != 0
    (tmp_path / "mailbak-backup@.service").write_text(unit.replace("Nice=10", "Nicety=10"))
    assert "Unknown key 'Nicety'" in analyze(tmp_path, "mailbak-backup@mox.service").stderr


def test_printed_unit_names_this_mailbak():
    unit = printed("mailbak-backup@.service")
    assert f"exec {MAILBAK} backup" in unit
    shipped = (Path(run_cli("systemd", "--dir").stdout.strip()) / "mailbak-backup@.service").read_text()
    assert "exec mailbak backup" in shipped


def exec_start(unit: str) -> list[str]:
    """The unit's ExecStart= as systemd would run it: words split, `$$` a literal `$`."""
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return [w.replace("$$", "$").replace("%%", "%") for w in shlex.split(line.split("=", 1)[1])]


def test_backup_and_prune_units_run_a_repository_with_metrics(store, tmp_path):
    """Runs the units' ExecStart= with the environment their EnvironmentFile= would give: two
    nightly snapshots into a repository, then a prune that keeps one."""
    repo = tmp_path / "repo"
    assert run_cli("init", repo).returncode == 0
    env = {
        **CLI_ENV,
        "STORE": str(store),
        "REPO": str(repo),
        "MAILBAK_OPTIONS": f"--metrics-file {tmp_path / 'backup.prom'}",
        "PRUNE_OPTIONS": f"--keep-last 1 --metrics-file {tmp_path / 'prune.prom'}",
    }
    for start in start_times(2):  # a snapshot name each, no sleep past a second boundary
        p = subprocess.run(exec_start(printed("mailbak-backup@.service")), capture_output=True, text=True, env=clock_env(start, env), timeout=300)
        assert p.returncode == 0, p.stderr
    made = sorted(d.name for d in repo.iterdir() if d.name not in ("mailbak-repo.json", ".trash"))
    assert len(made) == 2 and all(len(n) == len("2026-01-01T030000Z") and n.endswith("Z") for n in made)
    assert all(json.loads((repo / n / "mailbak.json").read_text())["status"] == "ok" for n in made)
    backup_metrics = (tmp_path / "backup.prom").read_text()
    assert 'mailbak_files{command="backup"' in backup_metrics and 'kind="reused"' in backup_metrics
    p = subprocess.run(exec_start(printed("mailbak-prune@.service")), capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert sorted(d.name for d in repo.iterdir() if not d.name.startswith((".", "mailbak-repo"))) == made[1:]
    prune_metrics = (tmp_path / "prune.prom").read_text()
    assert 'mailbak_snapshots{command="prune",target="' in prune_metrics
    assert 'state="removed"} 1' in prune_metrics and 'state="kept"} 1' in prune_metrics
    assert "mailbak_success{" in prune_metrics and 'kind="deleted"' in prune_metrics


def test_check_unit_reads_the_nights_slice(store, tmp_path):
    """The check unit's ExecStart= reads slice (day mod CHECK_PARTS) + 1 of CHECK_PARTS (30
    when unset), so that consecutive nights cover the history; its metrics name bytes read."""
    import time

    repo = tmp_path / "repo"
    assert run_cli("init", repo).returncode == 0
    assert run_cli("backup", store, repo).returncode == 0
    unit = printed("mailbak-check@.service")
    env = {**CLI_ENV, "REPO": str(repo), "CHECK_OPTIONS": f"--json --metrics-file {tmp_path / 'check.prom'}"}
    for parts in (None, "3"):
        run_env = env if parts is None else {**env, "CHECK_PARTS": parts}
        day = int(time.time()) // 86400
        p = subprocess.run(exec_start(unit), capture_output=True, text=True, env=run_env, timeout=300)
        assert p.returncode == 0, p.stderr
        summary = json.loads(p.stdout.splitlines()[-1])
        m = int(parts or 30)
        assert summary["subset"] in (f"{day % m + 1}/{m}", f"{(day + 1) % m + 1}/{m}"), summary["subset"]
        assert summary["snapshots"] == 1 and summary["read_data"]
    metrics = (tmp_path / "check.prom").read_text()
    assert 'mailbak_bytes_read{command="check"' in metrics and 'mailbak_inodes_checked{command="check"' in metrics


def test_example_env_matches_the_units():
    env = printed("example.env")
    for var in ("STORE=", "REPO=", "MAILBAK_OPTIONS=", "PRUNE_OPTIONS=", "CHECK_PARTS=", "CHECK_OPTIONS="):
        assert var in env


def test_unknown_unit_is_bad_usage():
    p = run_cli("systemd", "--print", "nope.service")
    assert p.returncode == 2 and "mailbak-backup@.service" in p.stderr


def test_bash_completion():
    script = subprocess.run([MAILBAK], env={**CLI_ENV, "_MAILBAK_COMPLETE": "bash_source"}, capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "_mailbak_completion" in script.stdout and "complete " in script.stdout
    env = {**CLI_ENV, "_MAILBAK_COMPLETE": "bash_complete", "COMP_WORDS": "mailbak ba", "COMP_CWORD": "1"}
    p = subprocess.run([MAILBAK], env=env, capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["plain,backup"]
    env.update(COMP_WORDS="mailbak backup --me", COMP_CWORD="2")
    p = subprocess.run([MAILBAK], env=env, capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["plain,--metrics-file"]


def test_version_names_the_engine_build():
    info = _engine.build_info()
    assert info["profile"] in ("release", "debug")
    p = run_cli("--version")
    assert p.returncode == 0
    assert p.stdout.startswith("mailbak, version ")
    assert f"engine {info['version']}, {info['profile']} build, {info['arch']}-{info['os']}" in p.stdout


@pytest.mark.parametrize("command", ["backup", "verify"])
def test_monitoring_options_are_documented_in_help(command):
    p = run_cli(command, "--help")
    assert "--metrics-file" in p.stdout and "--ping-url" in p.stdout


def test_hardlinks_failing_across_a_bind_mount_get_the_mount_hint(store, tmp_path):
    """ReadWritePaths= naming the store and DEST separately makes two mounts of one file system:
    link(2) fails with EXDEV although st_dev is the same. Recreated with a bind mount in a mount
    namespace of its own."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a mount namespace")
    (tmp_path / "backups").mkdir()
    (tmp_path / "view").mkdir()
    script = 'mount --bind "$1" "$2" && exec "$3" -m mailbak backup "$4" "$2/bk"'
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", tmp_path / "backups", tmp_path / "view", sys.executable, store], capture_output=True, text=True, env=CLI_ENV, timeout=300)
    assert p.returncode == 0, p.stderr
    assert os.stat(tmp_path / "backups").st_dev == os.stat(store).st_dev
    assert "hardlinks are not possible (Invalid cross-device link)" in p.stderr
    assert "same file system but reached through different mounts" in p.stderr
    assert "DEST on the same file system as the store makes backups nearly free" not in p.stderr


# Least privilege of the units (issue 18.15) ----------------------------------------------------

SERVICES = ("mailbak-backup@.service", "mailbak-prune@.service", "mailbak-check@.service")


def unit_setting(unit: str, key: str) -> str:
    """The value of the unit's one line ``KEY=value``."""
    [value] = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]
    return value


def exposure(path: Path) -> tuple[int, float]:
    """(exit status of `systemd-analyze security --threshold=30`, the overall exposure it prints)."""
    p = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=30", "--no-pager", str(path)], capture_output=True, text=True, timeout=60, cwd=path.parent)
    line = next(line for line in p.stdout.splitlines() if "Overall exposure level" in line)
    return p.returncode, float(line.split(": ", 1)[1].split()[0])


@pytest.mark.parametrize("name", SERVICES)
def test_services_expose_little_to_systemd_analyze_security(tmp_path, name):
    """Each service keeps only the capabilities and system calls mailbak uses: exposure at most
    3.0 (it was 5.5 with every capability and system call)."""
    unit = printed(name)
    path = tmp_path / name.replace("@.", "@mox.")
    path.write_text(unit)
    status, level = exposure(path)
    assert status == 0 and level <= 3.0, level
    for setting in ("CapabilityBoundingSet=CAP_", "SystemCallFilter=@system-service", "UMask=0077", "ProtectProc=invisible", "ProcSubset=pid", "MemoryMax="):
        assert setting in unit
    # The check is live: without the capability and system call filters the unit fails it.
    path.write_text("\n".join(line for line in unit.splitlines() if not line.startswith(("CapabilityBoundingSet=", "SystemCallFilter="))))
    status, level = exposure(path)
    assert status != 0 and level > 3.0


def confined(unit: str) -> list[str]:
    """The unit's ExecStart= run with only the capabilities of its CapabilityBoundingSet= (as
    systemd starts it: root with a reduced bounding set gets no others at exec) and its UMask=."""
    caps = ",".join("+" + c.removeprefix("CAP_").lower() for c in unit_setting(unit, "CapabilityBoundingSet").split())
    umask = unit_setting(unit, "UMask")
    return ["sh", "-c", f'umask {umask} && exec "$@"', "sh", "setpriv", f"--bounding-set=-all,{caps}", *exec_start(unit)]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a store by another user and to mount a btrfs image")
def test_units_commands_work_with_only_their_capabilities(tmp_path):
    """The capabilities the units keep are the ones mailbak needs: a store owned by another user
    (acting as its owner, giving copies their owners) on a btrfs subvolume (where checking which
    file LMDB mapped needs CAP_CHECKPOINT_RESTORE), two backups into a repository, then a prune."""
    from conftest import NOBODY, chown_tree
    from test_engine_repo import loop_fs

    with loop_fs(tmp_path, "btrfs", 256, "-q") as mnt:
        subprocess.run(["btrfs", "subvolume", "create", str(mnt / "mail")], check=True, capture_output=True)
        store = make_store(mnt / "mail" / "store", messages=60, accounts=2)
        chown_tree(store, NOBODY.pw_uid, NOBODY.pw_gid)
        repo = mnt / "repo"
        assert run_cli("init", repo).returncode == 0
        env = {**CLI_ENV, "STORE": str(store), "REPO": str(repo), "MAILBAK_OPTIONS": "", "PRUNE_OPTIONS": "--keep-last 1"}
        backup = printed("mailbak-backup@.service")
        for start in start_times(2):  # a snapshot name each, no sleep past a second boundary
            p = subprocess.run(confined(backup), capture_output=True, text=True, env=clock_env(start, env), timeout=300)
            assert p.returncode == 0 and p.stderr == "", p.stderr
        made = sorted(d.name for d in repo.iterdir() if not d.name.startswith((".", "mailbak-repo")))
        assert len(made) == 2
        assert run_cli("verify", repo / made[1]).returncode == 0
        owners = {(st.st_uid, st.st_gid) for st in map(os.lstat, (repo / made[1] / "data").rglob("*"))}
        assert owners == {(NOBODY.pw_uid, NOBODY.pw_gid)}
        p = subprocess.run(confined(printed("mailbak-prune@.service")), capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0 and p.stderr == "", p.stderr
        assert sorted(d.name for d in repo.iterdir() if not d.name.startswith((".", "mailbak-repo"))) == made[1:]

        # The nightly check reads every snapshot with its capabilities alone.
        p = subprocess.run(confined(printed("mailbak-check@.service")), capture_output=True, text=True, env={**env, "CHECK_PARTS": "1", "CHECK_OPTIONS": ""}, timeout=300)
        assert p.returncode == 0 and p.stderr == "", p.stderr

        # The check is live: the backup fails without one of the kept capabilities.
        p = subprocess.run(confined(backup.replace(" CAP_CHECKPOINT_RESTORE", "")), capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 1 and "database not backed up: replaced while it was being opened" in p.stderr
