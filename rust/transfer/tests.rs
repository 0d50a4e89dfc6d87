//! Tests of area backups and plain copies on scratch trees.

use super::*;
use crate::areas::Sizes;
use crate::classify::Snapshot;
use crate::fsutil::join;
use crate::fsutil::testutil::Scratch;
use crate::ids::IdSet;
use crate::msgpath;
use crate::progress::Progress;
use std::os::unix::fs::MetadataExt;

/// Recorded sizes from a list (None: unknown).
fn sizes(v: &[Option<u64>]) -> Sizes {
    v.iter().copied().collect()
}

fn area() -> Area {
    Area {
        tree: b"msg".to_vec(),
        known: vec![b"index.db".to_vec()],
        copy: vec![b"junkfilter.bloom".to_vec()],
    }
}

/// A snapshot of the live IDs `live`, nothing being erased, IDs from `next_id` new.
fn snap(live: Vec<u64>, next_id: u64) -> Snapshot {
    Snapshot {
        live: IdSet::new(live),
        erasing: IdSet::default(),
        next_id,
    }
}

fn get(t: &Tally) -> std::collections::HashMap<&'static str, u64> {
    t.to_pairs().into_iter().collect()
}

#[test]
fn backup_area_links_skips_reports_and_finds_missing() {
    let s = Scratch::new("area");
    for f in [
        "msg/a/1",
        "msg/a/2",
        "msg/a/3",
        "msg/b/9000",
        "msg/a/9001",
        "msg/a/stray",
        "notes",
        "index.db",
    ] {
        s.file(&format!("src/{f}"), f.as_bytes());
    }
    std::fs::create_dir(s.path("dst")).unwrap();
    // 1 and 2 live, 4 live but missing, 3 being erased, next ID 6: 9000 is new, 9001 is at
    // the wrong path (dir "a" holds IDs below 8192) and so is a stray.
    let snap = Snapshot {
        live: IdSet::new(vec![1, 2, 4]),
        erasing: IdSet::new(vec![3]),
        next_id: 6,
    };
    let a = area();
    let p = Progress::new(false, 100);
    let sink = Sink::new(&p, b"data/accounts/x");
    let policy = LinkPolicy::new(false);
    let sizes = sizes(&[Some(7), Some(7), Some(7)]); // "msg/a/1" and "msg/a/2" hold 7 bytes
    AreaBackup::new(&a, &snap, &sizes, &policy, &sink).run(
        fsutil::open_dir(&s.path("src")).unwrap(),
        fsutil::open_dir(&s.path("dst")).unwrap(),
    );
    let t = get(&sink.tally);
    assert_eq!(
        (
            t["linked"],
            t["skipped_new"],
            t["skipped_erasing"],
            t["known"],
            t["unrecognized"],
            t["missing"]
        ),
        (2, 1, 1, 1, 3, 1)
    );
    assert_eq!(
        std::fs::metadata(s.path("src/msg/a/1")).unwrap().ino(),
        std::fs::metadata(s.path("dst/msg/a/1")).unwrap().ino()
    );
    assert_ne!(
        std::fs::metadata(s.path("src/notes")).unwrap().ino(),
        std::fs::metadata(s.path("dst/notes")).unwrap().ino()
    );
    assert!(s.path("dst/msg/a/stray").exists() && s.path("dst/msg/a/9001").exists());
    assert!(
        !s.path("dst/msg/b/9000").exists()
            && !s.path("dst/msg/a/3").exists()
            && !s.path("dst/index.db").exists()
    );
    let events = p.drain();
    let missing: Vec<_> = events.iter().filter(|e| e.code == "missing").collect();
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].path, b"data/accounts/x/msg/a/4");
    assert_eq!(p.position().0, 3);
}

#[test]
fn copy_names_travel_with_the_area_as_plain_copies() {
    // The junk filter changes in place: it must be a copy (own inode), not a link, and not
    // a message (no progress unit, no "unrecognized" warning). A copy name deeper than the
    // area root is an ordinary stray.
    let s = Scratch::new("copyname");
    s.file("src/msg/a/1", b"one");
    s.file("src/junkfilter.bloom", b"bloom bits");
    s.file("src/sub/junkfilter.bloom", b"x");
    std::fs::create_dir(s.path("dst")).unwrap();
    let snap = snap(vec![1], 2);
    let a = area();
    let p = Progress::new(false, 100);
    let sink = Sink::new(&p, b"data/accounts/x");
    let policy = LinkPolicy::new(false);
    AreaBackup::new(&a, &snap, &sizes(&[Some(3)]), &policy, &sink).run(
        fsutil::open_dir(&s.path("src")).unwrap(),
        fsutil::open_dir(&s.path("dst")).unwrap(),
    );
    let ino = |p: &str| std::fs::metadata(s.path(p)).unwrap().ino();
    assert_ne!(ino("src/junkfilter.bloom"), ino("dst/junkfilter.bloom"));
    assert_eq!(
        std::fs::read(s.path("dst/junkfilter.bloom")).unwrap(),
        b"bloom bits"
    );
    let t = get(&sink.tally);
    // Linked: msg/a/1; copied: the stray sub/junkfilter.bloom only.
    assert_eq!(
        (t["linked"], t["copied"], t["known"], t["unrecognized"]),
        (1, 1, 1, 1)
    );
    assert_eq!(t["bytes_copied"], 10 + 1);
    assert_eq!(p.position().0, 1, "one progress unit: the message");
    let warned: Vec<_> = p
        .drain()
        .into_iter()
        .filter(|e| e.code == "unrecognized")
        .map(|e| e.path)
        .collect();
    assert_eq!(
        warned,
        vec![b"data/accounts/x/sub/junkfilter.bloom".to_vec()]
    );
}

#[test]
fn backup_areas_runs_every_area_in_order_below_the_anchor() {
    // Two areas of one call, relative to an anchor: the first is backed up, the second's
    // root does not exist, which is that area's error and does not stop the first.
    let s = Scratch::new("areas");
    s.file("data/accounts/a/msg/a/1", b"one");
    s.file("data/accounts/a/msg/a/1-lock", b"");
    std::fs::create_dir_all(s.path("dst/a")).unwrap();
    std::fs::create_dir_all(s.path("dst/b")).unwrap();
    let spec = |src: &str, prefix: &[u8]| AreaSpec {
        src: src.into(),
        area: area(),
        snap: snap(vec![1], 2),
        sizes: sizes(&[Some(3)]),
        prefix: prefix.to_vec(),
        proven: Vec::new(),
        sealed: false,
    };
    let jobs = [
        AreaJob {
            spec: spec("accounts/a", b"data/accounts/a"),
            dst: s.path("dst/a"),
            digests: None,
        },
        AreaJob {
            spec: spec("accounts/b", b"data/accounts/b"),
            dst: s.path("dst/b"),
            digests: None,
        },
    ];
    let opts = BackupOptions {
        anchor: Some(fsutil::open_dir(&s.path("data")).unwrap()),
        fence: Fence {
            skip: Vec::new(),
            skip_locks: true,
        },
        ..BackupOptions::default()
    };
    let p = Progress::new(false, 100);
    let out = backup_areas(&jobs.iter().collect::<Vec<_>>(), &opts, &p);
    let (a, b) = (get(&out[0].tally), get(&out[1].tally));
    assert_eq!((a["linked"], a["errors"], a["unrecognized"]), (1, 0, 0));
    assert_eq!((b["linked"], b["errors"]), (0, 1));
    assert_eq!((out[0].first_fallback, out[0].fallbacks), (None, 0));
    assert!(s.path("dst/a/msg/a/1").exists());
    assert!(
        !s.path("dst/a/msg/a/1-lock").exists(),
        "lock files never copied"
    );
    let ev = p.drain();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].code, ev[0].path.as_slice()),
        ("io", b"data/accounts/b/".as_slice())
    );
}

#[test]
fn copy_tree_counts_fallbacks_and_keeps_only_the_named_entries() {
    let s = Scratch::new("copytree");
    s.file("src/keep", b"k");
    s.file("src/leave", b"l");
    std::fs::create_dir(s.path("dst")).unwrap();
    let job = TreeCopy {
        prefix: b"data".to_vec(),
        only: Some(vec![b"keep".to_vec()]),
        ..TreeCopy::default()
    };
    let p = Progress::new(false, 100);
    let out = copy_tree(
        fsutil::open_dir(&s.path("src")).unwrap(),
        fsutil::open_dir(&s.path("dst")).unwrap(),
        &job,
        &p,
    );
    assert_eq!(get(&out.tally)["copied"], 1);
    assert!(s.path("dst/keep").exists() && !s.path("dst/leave").exists());
}

#[test]
fn unreadable_message_dir_files_are_placed_by_path() {
    // A message directory the walk cannot list (here: one that is really a symlink to a
    // directory, which the walk refuses to enter) still gets its snapshot files placed by
    // path, never through the symlink.
    let s = Scratch::new("unseen");
    s.file("elsewhere/5", b"five");
    std::fs::create_dir_all(s.path("src/msg")).unwrap();
    std::os::unix::fs::symlink(s.path("elsewhere"), s.path("src/msg/a")).unwrap();
    std::fs::create_dir(s.path("dst")).unwrap();
    let snap = snap(vec![5], 6);
    let a = area();
    let p = Progress::new(false, 100);
    let sink = Sink::new(&p, b"");
    let policy = LinkPolicy::new(false);
    AreaBackup::new(&a, &snap, &sizes(&[None]), &policy, &sink).run(
        fsutil::open_dir(&s.path("src")).unwrap(),
        fsutil::open_dir(&s.path("dst")).unwrap(),
    );
    let t = get(&sink.tally);
    assert_eq!(t["linked"], 0);
    assert_eq!(t["errors"], 1);
    assert_eq!(
        t["missing"], 1,
        "the message behind the symlink is not in the backup"
    );
    assert_eq!(p.position().0, 1);
    // The symlink was recreated as a link, and nothing was written through it.
    assert!(std::fs::symlink_metadata(s.path("dst/msg/a"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_dir(s.path("elsewhere")).unwrap().count(), 1);
    let ev = p.drain();
    let errors: Vec<_> = ev
        .iter()
        .filter(|e| e.severity == crate::progress::Severity::Error)
        .collect();
    assert_eq!(errors.len(), 1, "{ev:?}");
    assert_eq!(errors[0].path, b"msg/a");
    assert!(
        errors[0]
            .detail
            .contains("not a directory (a symlink is never followed)"),
        "{ev:?}"
    );
}

#[test]
fn a_directory_at_a_message_path_is_one_clear_error() {
    let s = Scratch::new("dirmsg");
    s.file("src/msg/a/5/inside", b"x");
    s.file("src/msg/a/6", b"six");
    std::fs::create_dir(s.path("dst")).unwrap();
    let snap = snap(vec![5, 6], 7);
    let a = area();
    let p = Progress::new(false, 100);
    let sink = Sink::new(&p, b"");
    let policy = LinkPolicy::new(false);
    let sizes = sizes(&[None, Some(3)]);
    AreaBackup::new(&a, &snap, &sizes, &policy, &sink).run(
        fsutil::open_dir(&s.path("src")).unwrap(),
        fsutil::open_dir(&s.path("dst")).unwrap(),
    );
    let t = get(&sink.tally);
    assert_eq!((t["linked"], t["missing"], t["errors"]), (1, 1, 1));
    assert_eq!(
        p.position().0,
        2,
        "one unit of progress per snapshot message, no more"
    );
    let ev = p.drain();
    let errors: Vec<_> = ev
        .iter()
        .filter(|e| e.severity == crate::progress::Severity::Error)
        .collect();
    assert_eq!(errors.len(), 1, "{ev:?}");
    assert_eq!(
        (errors[0].code, errors[0].path.as_slice()),
        ("not_regular", b"msg/a/5".as_slice())
    );
    assert!(errors[0].detail.contains("not a regular file"), "{ev:?}");
}

#[test]
fn placed_files_are_checked_against_their_record_sizes() {
    let s = Scratch::new("sizes");
    s.file("src/msg/a/1", b"12345");
    s.file("src/msg/a/2", b"12345");
    s.file("src/msg/a/3", b"12345");
    std::fs::create_dir(s.path("dst")).unwrap();
    // 1 matches, 2 is shorter than its record, 3 claims the largest u64 (no sentinel).
    let snap = snap(vec![1, 2, 3], 4);
    let a = area();
    for force_copy in [false, true] {
        let _ = std::fs::remove_dir_all(s.path("dst"));
        std::fs::create_dir(s.path("dst")).unwrap();
        let p = Progress::new(false, 100);
        let sink = Sink::new(&p, b"");
        let policy = LinkPolicy::new(force_copy);
        AreaBackup::new(
            &a,
            &snap,
            &sizes(&[Some(5), Some(9), Some(u64::MAX)]),
            &policy,
            &sink,
        )
        .run(
            fsutil::open_dir(&s.path("src")).unwrap(),
            fsutil::open_dir(&s.path("dst")).unwrap(),
        );
        let mut bad: Vec<_> = p
            .drain()
            .into_iter()
            .filter(|e| e.code == "size_mismatch")
            .map(|e| e.path)
            .collect();
        bad.sort();
        assert_eq!(
            bad,
            vec![b"msg/a/2".to_vec(), b"msg/a/3".to_vec()],
            "force_copy {force_copy}"
        );
        assert_eq!(get(&sink.tally)["errors"], 2);
    }
}

#[test]
fn plain_copy_recreates_symlinks_and_skips_fifos() {
    let s = Scratch::new("plain");
    s.file("src/conf/a.toml", b"x");
    std::os::unix::fs::symlink("/etc/shadow", s.path("src/conf/shadow")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        s.path("src/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    std::fs::create_dir(s.path("dst")).unwrap();
    let p = Progress::new(false, 100);
    let sink = Sink::new(&p, b"config");
    let policy = LinkPolicy::new(false);
    PlainCopy::new(None, &policy, &sink).run(
        fsutil::open_dir(&s.path("src")).unwrap(),
        fsutil::open_dir(&s.path("dst")).unwrap(),
        None,
    );
    let t = get(&sink.tally);
    assert_eq!(
        (t["copied"], t["symlinks"], t["special"], t["warnings"]),
        (1, 1, 1, 1)
    );
    assert_eq!(
        std::fs::read_link(s.path("dst/conf/shadow"))
            .unwrap()
            .to_str(),
        Some("/etc/shadow")
    );
    assert!(!s.path("dst/fifo").exists());
    assert_eq!(p.drain()[0].path, b"config/fifo");
}

#[test]
fn plain_copy_links_only_message_files_when_asked() {
    let s = Scratch::new("restore");
    s.file("src/msg/a/7", b"m");
    s.file("src/index.db", b"db");
    std::fs::create_dir(s.path("dst")).unwrap();
    let a = area();
    let p = Progress::new(false, 100);
    let sink = Sink::new(&p, b"");
    let policy = LinkPolicy::new(false);
    PlainCopy::new(Some(&a), &policy, &sink).run(
        fsutil::open_dir(&s.path("src")).unwrap(),
        fsutil::open_dir(&s.path("dst")).unwrap(),
        None,
    );
    let ino = |p: &str| std::fs::metadata(s.path(p)).unwrap().ino();
    assert_eq!(ino("src/msg/a/7"), ino("dst/msg/a/7"));
    assert_ne!(ino("src/index.db"), ino("dst/index.db"));
}

/// Makes `dst` a copy of `src` as a backup would: same bytes, mode, owner and mtime.
fn clone_file(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::copy(src, dst).unwrap();
    let m = std::fs::metadata(src).unwrap();
    std::fs::set_permissions(dst, m.permissions()).unwrap();
    let f = std::fs::File::options().write(true).open(dst).unwrap();
    f.set_modified(m.modified().unwrap()).unwrap();
}

/// Sets the mtime of `path` to `sec`.`nsec`.
fn set_mtime(path: &std::path::Path, sec: u64, nsec: u32) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(sec, nsec);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn reuse_from_a_reference_only_for_the_same_file() {
    // Links from the store are ruled out (force_copy), so every placed file consults the
    // reference: only a regular file of the same size, mtime (to the nanosecond), mode and
    // owner, with a known recorded size for a message, is linked from it.
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("reuse");
    for id in 1..=8 {
        s.file(
            &format!("src/msg/a/{id}"),
            format!("message {id}").as_bytes(),
        );
        set_mtime(
            &s.path(&format!("src/msg/a/{id}")),
            1_700_000_000,
            123_456_789,
        );
    }
    s.file("src/msg/b/9000", b"message in b");
    s.file("src/junkfilter.bloom", b"bloom");
    s.file("src/notes", b"a stray");
    s.file("outside/8", b"message 8");
    for f in [
        "msg/a/1",
        "msg/a/2",
        "msg/a/3",
        "msg/a/4",
        "msg/a/5",
        "msg/b/9000",
        "junkfilter.bloom",
        "notes",
    ] {
        clone_file(&s.path(&format!("src/{f}")), &s.path(&format!("ref/{f}")));
    }
    // 2: other size (same mtime); 3: same size, other nanoseconds; 4: other mode;
    // 5: unknown recorded size; 6: other owner; 7: a symlink to the outside file in the ref;
    // b/: the reference's directory is a symlink to a directory holding the same file.
    std::fs::write(s.path("ref/msg/a/2"), b"message 2 changed").unwrap();
    set_mtime(&s.path("ref/msg/a/2"), 1_700_000_000, 123_456_789);
    set_mtime(&s.path("ref/msg/a/3"), 1_700_000_000, 123_456_788);
    std::fs::set_permissions(
        s.path("ref/msg/a/4"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        s.path("src/msg/a/4"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    // 6: the same file but another owner (compared when running as root, as tests do).
    clone_file(&s.path("src/msg/a/6"), &s.path("ref/msg/a/6"));
    std::os::unix::fs::chown(s.path("ref/msg/a/6"), Some(65534), Some(65534)).unwrap();
    clone_file(&s.path("src/msg/a/7"), &s.path("outside/7"));
    std::os::unix::fs::symlink(s.path("outside/7"), s.path("ref/msg/a/7")).unwrap();
    std::fs::rename(s.path("ref/msg/b"), s.path("outside/b")).unwrap();
    std::os::unix::fs::symlink(s.path("outside/b"), s.path("ref/msg/b")).unwrap();
    std::fs::create_dir(s.path("dst")).unwrap();
    let ids: Vec<u64> = (1..=8).chain([9000]).collect();
    let snap = snap(ids.clone(), 9001);
    let sizes: Sizes = ids
        .iter()
        .map(|&id| {
            let n = std::fs::metadata(s.path(&format!(
                "src/{}",
                String::from_utf8(join(b"msg", &msgpath::rel_path(id))).unwrap()
            )))
            .unwrap()
            .len();
            (id != 5).then_some(n)
        })
        .collect();
    let a = area();
    let p = Progress::new(true, 1000);
    let sink = Sink::new(&p, b"");
    let policy = LinkPolicy::new(true);
    AreaBackup::new(&a, &snap, &sizes, &policy, &sink)
        .with_reference(Some(fsutil::open_dir(&s.path("ref")).unwrap()))
        .run(
            fsutil::open_dir(&s.path("src")).unwrap(),
            fsutil::open_dir(&s.path("dst")).unwrap(),
        );
    let ino = |p: &str| std::fs::symlink_metadata(s.path(p)).unwrap().ino();
    let t = get(&sink.tally);
    // Reused: msg/a/1, junkfilter.bloom, notes; copied: messages 2-8 and 9000 plus nothing else.
    assert_eq!(
        (t["reused"], t["copied"], t["errors"]),
        (3, 8, 0),
        "{:?}",
        p.drain()
    );
    assert_eq!(ino("dst/msg/a/1"), ino("ref/msg/a/1"));
    assert_eq!(ino("dst/junkfilter.bloom"), ino("ref/junkfilter.bloom"));
    assert_eq!(ino("dst/notes"), ino("ref/notes"));
    for f in ["msg/a/2", "msg/a/3", "msg/a/4", "msg/a/5", "msg/a/6"] {
        assert_ne!(
            ino(&format!("dst/{f}")),
            ino(&format!("ref/{f}")),
            "{f} reused"
        );
        assert_eq!(
            std::fs::read(s.path(&format!("dst/{f}"))).unwrap(),
            std::fs::read(s.path(&format!("src/{f}"))).unwrap()
        );
    }
    assert_ne!(
        ino("dst/msg/a/7"),
        ino("outside/7"),
        "a symlink in the reference was followed"
    );
    assert_ne!(
        ino("dst/msg/b/9000"),
        ino("outside/b/9000"),
        "a symlinked reference directory was followed"
    );
    assert!(std::fs::symlink_metadata(s.path("dst/msg/a/7"))
        .unwrap()
        .is_file());
    assert_eq!(std::fs::read(s.path("outside/8")).unwrap(), b"message 8");
    assert_eq!((policy.fallbacks(), policy.first_fallback()), (0, None));
    let reused: Vec<_> = p
        .drain()
        .into_iter()
        .filter(|e| e.code == "reused")
        .map(|e| e.path)
        .collect();
    assert_eq!(reused.len(), 3);
    // The same run without the reference copies everything: the test above is about it.
    let p2 = Progress::new(false, 1000);
    let sink2 = Sink::new(&p2, b"");
    std::fs::create_dir(s.path("dst2")).unwrap();
    AreaBackup::new(&a, &snap, &sizes, &policy, &sink2).run(
        fsutil::open_dir(&s.path("src")).unwrap(),
        fsutil::open_dir(&s.path("dst2")).unwrap(),
    );
    assert_eq!(get(&sink2.tally)["reused"], 0);
}

#[test]
fn a_failed_link_from_the_reference_is_a_counted_fallback_copy() {
    // The reference's file cannot be linked (here: the reference is on another file system
    // than the destination, EXDEV; on ext4 at 65,000 links it would be EMLINK): the file is
    // copied and counted as one link fallback with that errno, never an error.
    let shm = std::path::Path::new("/dev/shm");
    let s = Scratch::new("reusefail");
    let refdir = shm.join(format!("mailbak-reusefail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&refdir);
    s.file("src/msg/a/1", b"one");
    clone_file(&s.path("src/msg/a/1"), &refdir.join("msg/a/1"));
    std::fs::create_dir(s.path("dst")).unwrap();
    let same_dev = std::fs::metadata(&refdir).unwrap().dev()
        == std::fs::metadata(s.path("dst")).unwrap().dev();
    let snap = snap(vec![1], 2);
    let a = area();
    let p = Progress::new(false, 100);
    let sink = Sink::new(&p, b"");
    let policy = LinkPolicy::new(true);
    AreaBackup::new(&a, &snap, &sizes(&[Some(3)]), &policy, &sink)
        .with_reference(Some(fsutil::open_dir(&refdir).unwrap()))
        .run(
            fsutil::open_dir(&s.path("src")).unwrap(),
            fsutil::open_dir(&s.path("dst")).unwrap(),
        );
    let _ = std::fs::remove_dir_all(&refdir);
    assert!(
        !same_dev,
        "/dev/shm must be another file system than the scratch directory"
    );
    let t = get(&sink.tally);
    assert_eq!((t["reused"], t["copied"], t["errors"]), (0, 1, 0));
    assert_eq!(
        (policy.fallbacks(), policy.first_fallback()),
        (1, Some(Errno::XDEV))
    );
    assert_eq!(std::fs::read(s.path("dst/msg/a/1")).unwrap(), b"one");
}
