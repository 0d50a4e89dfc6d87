"""Benchmark of repositories on btrfs (issue 22.2): the subvolume method against the hardlink
method on the same loop-mounted btrfs image, and prune against ``rm -rf``.

    .venv/bin/python bench/btrfs.py --store STORE [--image-gb G] [--churn C] [--json FILE]

Method, one run (needs root and a kernel with btrfs):
1. A work copy of STORE (``cp -a``, untimed) on STORE's file system, so that the churn never
   changes the cached store; a btrfs image (sparse file, ``mkfs.btrfs``) loop-mounted.
2. Two repositories on the image: ``init`` (method ``subvolume``) and one whose marker names no
   method (``hardlink``, as a mailbak before the choice made it).
3. Timed: the first snapshot into each (copies; reflinks are impossible, the store is on another
   file system). Then 2 s pass (files written from 2 s before a reference's start on are
   copied, never reused) and the churn: ``C`` of the messages delivered and as many expunged,
   spread over the accounts (bench/offsite.py's ``churn``).
4. Timed: the second snapshot into each, the subvolume one first.
5. ``cp -al`` of the hardlink repository's first snapshot onto the image (untimed); then timed:
   ``prune --keep-last 1 --no-nice`` of each repository (each removes its first snapshot) and
   ``rm -rf`` of the ``cp -al`` tree (the same files as the hardlink snapshot).
6. Timed: a third snapshot into the subvolume repository (no churn), then its prune of the
   second: the snapshot a night's prune removes was itself a nightly clone (deleting a subvolume
   evicts its cached inodes; the first snapshot's were all loaded when it was written, a
   sealed clone's unchanged files never are).
Warm cache: every timed step reads what the step before it read; everything dirty is written
back (``sync``) before each. Markdown to stdout, progress to
stderr; ``--json FILE`` keeps the raw timings and summaries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offsite import churn  # noqa: E402
from run import Places, machine_info, machine_markdown, probe_mailbak  # noqa: E402


def log(text: str) -> None:
    """A progress line on stderr."""
    print(text, file=sys.stderr, flush=True)


def timed(argv: list[str | os.PathLike]) -> tuple[float, dict]:
    """Runs ``argv`` after writing back everything dirty (so that no step pays for an earlier
    one's write-back: mailbak's ``syncfs`` of the image would otherwise flush the snapshot the
    step before wrote) and returns its wall time and, for a mailbak --json run, its summary."""
    os.sync()
    t0 = time.perf_counter()
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        log(f"failed ({p.returncode}): {' '.join(map(str, argv))}\n{p.stdout[-4000:]}{p.stderr[-4000:]}")
        sys.exit(1)
    summary = next((json.loads(line) for line in p.stdout.splitlines() if '"summary"' in line), {})
    return seconds, summary


def mailbak(*args: str | os.PathLike) -> list[str | os.PathLike]:
    """The argv of ``mailbak ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "mailbak", *args]


@contextlib.contextmanager
def btrfs_image(where: Path, size_gb: int) -> Iterator[Path]:
    """A loop-mounted btrfs image below ``where``; unmounted and removed in all cases."""
    image, mnt = where / "btrfs.img", where / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_gb << 30)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        image.unlink()


def main() -> None:
    """Runs the benchmark (see the module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, required=True, help="a generated store (mailbak gen); copied, never changed")
    ap.add_argument("--image-gb", type=int, default=16)
    ap.add_argument("--churn", type=float, default=0.01, help="share of the messages delivered, and as many expunged")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    # The machine's facts (the dentry hash size, the commit, the load) as every harness records them.
    store_dir = args.store.resolve().parent
    info = machine_info(Places(cache=store_dir, near=store_dir, far=store_dir), [sys.executable, *sys.argv], probe_mailbak())
    for key in ("fs_same_fs_dest", "fs_cross_device_dest", "rsync"):
        info.pop(key, None)
    info["fs_repository"] = "btrfs on a loop-mounted sparse image beside the store"
    results: dict[str, float] = {}
    summaries: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mailbak-bench-btrfs-", dir=args.store.parent) as tmp:
        work = Path(tmp) / "store"
        log(f"copying {args.store} to {work}")
        subprocess.run(["cp", "-a", str(args.store), str(work)], check=True)
        with btrfs_image(Path(tmp), args.image_gb) as mnt:
            sub, hl = mnt / "subvolume", mnt / "hardlink"
            for r in (sub, hl):
                timed(mailbak("init", r))
            marker = json.loads((hl / "mailbak-repo.json").read_text())
            del marker["method"]
            (hl / "mailbak-repo.json").write_text(json.dumps(marker))
            for key, r in (("first_subvolume", sub), ("first_hardlink", hl)):
                log(key)
                results[key], summaries[key] = timed(mailbak("backup", "--json", work, r))
            messages = summaries["first_subvolume"]["transfer"]["messages"]
            time.sleep(2.1)
            n = max(1, int(messages * args.churn / 2))
            log(f"churn: {n} delivered, {n} expunged")
            churn(work, n, args.seed)
            for key, r in (("second_subvolume", sub), ("second_hardlink", hl)):
                log(key)
                results[key], summaries[key] = timed(mailbak("backup", "--json", work, r))
            first_hl = sorted(p for p in hl.iterdir() if p.name[0].isdigit())[0]
            twin = mnt / "cp-al"
            subprocess.run(["cp", "-al", str(first_hl), str(twin)], check=True)
            subprocess.run(["sync"], check=True)
            for key, r in (("prune_subvolume", sub), ("prune_hardlink", hl)):
                log(key)
                results[key], summaries[key] = timed(mailbak("prune", "--json", r, "--keep-last", "1", "--no-nice"))
            log("rm -rf")
            results["rm_rf"], _ = timed(["rm", "-rf", twin])
            # A night's prune removes a snapshot that was itself a nightly clone, not the first
            # (full) one: deleting a subvolume evicts its cached inodes, and a sealed clone's
            # unchanged files were never loaded. A third snapshot, then the prune of the second.
            log("third_subvolume")
            results["third_subvolume"], summaries["third_subvolume"] = timed(mailbak("backup", "--json", work, sub))
            subprocess.run(["sync"], check=True)
            log("prune_nightly_subvolume")
            results["prune_nightly_subvolume"], summaries["prune_nightly_subvolume"] = timed(mailbak("prune", "--json", sub, "--keep-last", "1", "--no-nice"))
        shutil.rmtree(work, ignore_errors=True)
    print(f"## mailbak benchmark: btrfs repositories\n\n{machine_markdown(info)}\n")
    print(f"## {messages:,} messages, churn {args.churn:.1%} (loop-mounted btrfs image, store on another file system)\n")
    print("| step | seconds | ratio |")
    print("|---|---|---|")
    print(f"| first snapshot, subvolume | {results['first_subvolume']:.2f} | {results['first_subvolume'] / results['first_hardlink']:.2f} x hardlink |")
    print(f"| first snapshot, hardlink | {results['first_hardlink']:.2f} | |")
    print(f"| second snapshot, subvolume | {results['second_subvolume']:.2f} | {results['second_subvolume'] / results['second_hardlink']:.3f} x hardlink |")
    print(f"| second snapshot, hardlink | {results['second_hardlink']:.2f} | |")
    print(f"| prune, subvolume | {results['prune_subvolume']:.2f} | {results['prune_subvolume'] / results['rm_rf']:.3f} x rm -rf |")
    print(f"| prune, hardlink | {results['prune_hardlink']:.2f} | {results['prune_hardlink'] / results['rm_rf']:.3f} x rm -rf |")
    print(f"| rm -rf (cp -al of a snapshot) | {results['rm_rf']:.2f} | |")
    print(f"| third snapshot, subvolume (no churn) | {results['third_subvolume']:.2f} | {results['third_subvolume'] / results['second_hardlink']:.3f} x second, hardlink |")
    print(f"| prune of a nightly (cloned) snapshot, subvolume | {results['prune_nightly_subvolume']:.2f} | {results['prune_nightly_subvolume'] / results['rm_rf']:.3f} x rm -rf |")
    t = summaries["second_subvolume"]["transfer"]
    print(f"\nsecond snapshot, subvolume: reused {t['reused']}, copied {t['copied']}, removed {t.get('removed')}, bytes copied {t['bytes_copied']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "messages": messages, "churn": args.churn, "seconds": results, "summaries": summaries}, indent=2))


if __name__ == "__main__":
    main()
