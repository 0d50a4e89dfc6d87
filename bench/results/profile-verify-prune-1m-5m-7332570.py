"""Issue 22 part 4: why verify and prune grow from 1M to 5M (the .txt beside this file).

    cd CHECKOUT && .venv/bin/python bench/results/profile-verify-prune-1m-5m-7332570.py OUTDIR 1000000 5000000

Needs root, perf, filefrag, a loop device, the disk `vda` (its counters are read), and the
cached --scale stores of bench/cold.py (bench/.cache/store-Nm-50a-seed1-ms1024). Per size: W
and an ext4 image as bench/cold.py makes them, backup, churn, nightly (untimed here); then each
with the caches dropped before it: verify of the nightly (plain, then under `perf record -a
-g`), a find -printf of the same snapshot (its peer), prune of the first snapshot (plain),
prune of a cp -al of the nightly put in .trash (under perf), rm -rf of a cp -al of the nightly
(plain, then under perf). Each step's wall, user and sys time, faults, context switches and the
loop device's and vda's read and write counts go to OUTDIR/results.jsonl, perf data to
OUTDIR/STEP-N.data."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

import cold  # noqa: E402  (bench/ is not a package: imported by path)
from repo import make_work_store, new_snapshot, run_churn  # noqa: E402
from run import mailbak_cli, remove_tree  # noqa: E402

OUT = Path(sys.argv[1]).resolve()
NEAR = BENCH / ".cache" / "work"


def cached_store(n):
    return BENCH / ".cache" / f"store-{n}m-50a-seed1-ms1024" / "store"


def disk_bytes(n):
    return json.loads((cached_store(n).parent / "complete.json").read_text())["disk_bytes"]


def status(msg):
    (OUT / "status").write_text(f"{time.strftime('%H:%M:%S')} {msg}\n")
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def blkstat(dev):
    f = Path(f"/sys/block/{dev}/stat").read_text().split()
    return {"r_ios": int(f[0]), "r_sect": int(f[2]), "r_ms": int(f[3]), "w_ios": int(f[4]), "w_sect": int(f[6]), "w_ms": int(f[7])}


def step(name, argv, n, loopdev, perf=None):
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    b = {d: blkstat(d) for d in (loopdev, "vda")}
    if perf:
        argv = ["perf", "record", "-F", "499", "-a", "-g", "-o", str(perf), "--", *argv]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(OUT / f"{name}-{n}.err", "w"))
    _, st, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    a = {d: blkstat(d) for d in (loopdev, "vda")}
    r = {
        "step": name,
        "n": n,
        "rc": os.waitstatus_to_exitcode(st),
        "wall": round(wall, 2),
        "user": round(ru.ru_utime, 2),
        "sys": round(ru.ru_stime, 2),
        "majflt": ru.ru_majflt,
        "nvcsw": ru.ru_nvcsw,
        "nivcsw": ru.ru_nivcsw,
        "maxrss_mib": ru.ru_maxrss // 1024,
        "io": {d: {k: a[d][k] - b[d][k] for k in a[d]} for d in a},
    }
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps(r) + "\n")
    status(f"{n} {name}: {json.dumps(r)}")
    return r


def one(n):
    work_dir = NEAR / "prof22"
    if (work_dir / "mnt").is_mount():
        subprocess.run(["umount", str(work_dir / "mnt")])
    remove_tree(work_dir)
    work_dir.mkdir(parents=True)
    work = work_dir / "store"
    status(f"{n} W")
    make_work_store(cached_store(n), work)
    cond = cold.Conditions(drop=True, drop_note=None, loop=True, loop_note=None)
    with cold.repo_place(work_dir, cond, work, {"disk_bytes": disk_bytes(n)}) as (mnt, image):
        loopdev = Path(image["device"]).name
        repo = mnt / "repo"
        subprocess.run(mailbak_cli("init", "--quiet", str(repo)), check=True)
        status(f"{n} backup")
        t = time.time()
        subprocess.run(mailbak_cli("backup", "--quiet", str(work), str(repo)), check=True)
        status(f"{n} backup took {time.time() - t:.0f}s")
        s1 = new_snapshot(repo, [])["snapshot"]
        run_churn(work, 1001, os.statvfs(mnt).f_frsize, OUT / "churn.log")
        t = time.time()
        subprocess.run(mailbak_cli("backup", "--quiet", str(work), str(repo)), check=True)
        status(f"{n} nightly took {time.time() - t:.0f}s")
        s2 = new_snapshot(repo, [s1])["snapshot"]
        S2 = repo / s2
        step("verify", mailbak_cli("verify", str(S2)), n, loopdev)
        step("find", ["find", str(S2), "-printf", "%s\n"], n, loopdev)
        step("verify-perf", mailbak_cli("verify", str(S2)), n, loopdev, perf=OUT / f"verify-{n}.data")
        step("prune", mailbak_cli("prune", str(repo), "--keep-last", "1", "--no-nice"), n, loopdev)
        (repo / ".trash").mkdir(exist_ok=True)
        subprocess.run(["cp", "-al", str(S2), str(repo / ".trash" / "sweep")], check=True)
        step("prune-perf", mailbak_cli("prune", str(repo), "--keep-last", "1", "--no-nice"), n, loopdev, perf=OUT / f"prune-{n}.data")
        subprocess.run(["cp", "-al", str(S2), str(mnt / "twin")], check=True)
        step("rm", ["rm", "-rf", "--", str(mnt / "twin")], n, loopdev)
        subprocess.run(["cp", "-al", str(S2), str(mnt / "twin")], check=True)
        step("rm-perf", ["rm", "-rf", "--", str(mnt / "twin")], n, loopdev, perf=OUT / f"rm-{n}.data")
        # The image file's extent count on / (fragmentation of the host file).
        fr = subprocess.run(["filefrag", image["image"]], capture_output=True, text=True).stdout.strip()
        status(f"{n} filefrag: {fr}")
        with open(OUT / "results.jsonl", "a") as f:
            f.write(json.dumps({"n": n, "filefrag": fr, "image": image}) + "\n")
    remove_tree(work_dir)


OUT.mkdir(parents=True, exist_ok=True)
for n in map(int, sys.argv[2:]):
    one(n)
status("done")
