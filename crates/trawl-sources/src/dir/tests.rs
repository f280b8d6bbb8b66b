use super::*;
use crate::test_support::{component, Bench};
use std::fs;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn dir(path: &Path, extra: &str) -> Component {
    component("dir", path, &format!("settle = '100ms'\n{extra}"))
}

#[tokio::test]
async fn publishes_each_file_once_across_restarts() {
    let watched = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    fs::write(watched.path().join("a.bin"), b"a").unwrap();
    fs::write(watched.path().join("b.bin"), b"bb").unwrap();
    let b = Bench::new().await;
    let src = DirFactory
        .build(&dir(watched.path(), ""), data.path())
        .unwrap();

    let run = b.start(src.clone());
    assert_eq!(b.names(2).await, ["a.bin", "b.bin"]);
    b.nothing_more().await;
    run.stop().await;

    // A restart knows what it published; only the new file goes out.
    fs::write(watched.path().join("c.bin"), b"ccc").unwrap();
    let run = b.start(src);
    assert_eq!(b.names(1).await, ["c.bin"]);
    b.nothing_more().await;
    run.stop().await;
    assert_eq!(b.stats.published.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_growing_file_waits_until_it_settles() {
    let watched = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let b = Bench::new().await;
    let src = DirFactory
        .build(&dir(watched.path(), ""), data.path())
        .unwrap();
    let run = b.start(src);
    let path = watched.path().join("growing");
    for i in 0..6 {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[i; 100]).unwrap();
        drop(f);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(
            b.payloads
                .next_timeout(Duration::from_millis(1))
                .await
                .unwrap()
                .is_none(),
            "published while still being written"
        );
    }
    assert_eq!(b.events(1).await[0].size, 600);
    run.stop().await;
}

#[tokio::test]
async fn delete_and_move_apply_after_publish() {
    let watched = tempfile::tempdir().unwrap();
    let done = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    fs::create_dir(watched.path().join("sub")).unwrap();
    fs::write(watched.path().join("sub/x"), b"x").unwrap();
    let b = Bench::new().await;
    let c = dir(
        watched.path(),
        &format!("after = 'move:{}'\n", done.path().display()),
    );
    let run = b.start(DirFactory.build(&c, data.path()).unwrap());
    assert_eq!(b.names(1).await, ["x"]);
    run.stop().await;
    assert!(!watched.path().join("sub/x").exists());
    assert_eq!(fs::read(done.path().join("sub/x")).unwrap(), b"x");

    fs::write(watched.path().join("y"), b"y").unwrap();
    let c = dir(watched.path(), "after = 'delete'\n");
    let run = b.start(DirFactory.build(&c, data.path()).unwrap());
    assert_eq!(b.names(1).await, ["y"]);
    run.stop().await;
    assert!(!watched.path().join("y").exists());
}

#[tokio::test]
async fn include_and_exclude_globs_pick_the_files() {
    let watched = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    fs::create_dir(watched.path().join("deep")).unwrap();
    for name in [
        "a.exe",
        "deep/b.exe",
        "deep/c.txt",
        "skip.exe",
        "deep/d.exe.part",
    ] {
        fs::write(watched.path().join(name), name).unwrap();
    }
    let b = Bench::new().await;
    let c = dir(
        watched.path(),
        "include = ['*.exe', '*.txt']\nexclude = ['skip.*', 'deep/c.*']\n",
    );
    let run = b.start(DirFactory.build(&c, data.path()).unwrap());
    assert_eq!(b.names(2).await, ["a.exe", "b.exe"]);
    b.nothing_more().await;
    run.stop().await;
}

#[tokio::test]
async fn a_folder_above_its_high_water_mark_is_reported() {
    let watched = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    for i in 0..5 {
        fs::write(watched.path().join(format!("f{i}")), [i; 10]).unwrap();
    }
    let b = Bench::new().await;
    let c = dir(watched.path(), "high_water_files = 3\n");
    let run = b.start(DirFactory.build(&c, data.path()).unwrap());
    b.events(5).await;
    assert_eq!(b.stats.over_high_water.load(Ordering::Relaxed), 1);
    assert_eq!(b.stats.folder_files.load(Ordering::Relaxed), 5);
    assert_eq!(b.stats.folder_bytes.load(Ordering::Relaxed), 50);
    for i in 0..3 {
        fs::remove_file(watched.path().join(format!("f{i}"))).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.stats.over_high_water.load(Ordering::Relaxed), 0);
    assert_eq!(b.stats.folder_files.load(Ordering::Relaxed), 2);
    run.stop().await;
    assert_eq!(b.stats.folder_files.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_file_over_max_size_is_an_error_result() {
    let watched = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    fs::write(watched.path().join("huge"), vec![0u8; 4096]).unwrap();
    let b = Bench::new().await;
    let c = dir(watched.path(), "max_size = 1024\n");
    let run = b.start(DirFactory.build(&c, data.path()).unwrap());
    let r = b.result().await;
    assert_eq!(r.worker.name, crate::INGEST_WORKER);
    assert_eq!(r.payload.filename.as_deref(), Some("huge"));
    assert!(
        r.outcome
            .message
            .unwrap()
            .contains("over the 1024-byte limit"),
        "error names the limit"
    );
    b.nothing_more().await;
    run.stop().await;
}

#[test]
fn config_errors_name_the_key() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("file");
    fs::write(&f, b"").unwrap();
    let e = DirFactory
        .build(&dir(&f, ""), d.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("sources.drop: path:") && e.contains("is a file"),
        "{e}"
    );
    let check = |extra: &str| {
        DirFactory
            .check(&dir(d.path(), extra))
            .unwrap_err()
            .to_string()
    };
    assert!(check("after = 'shred'\n").contains("after"));
    assert!(check("include = ['a[']\n").contains("include"));
    let e = check("eve = '/var/log/suricata/eve.json'\n");
    assert!(
        e.contains("sources.drop: unknown field `eve`, expected `settle`"),
        "{e}"
    );
}

#[tokio::test]
async fn names_that_are_not_utf8_are_published_and_checkpointed() {
    use std::os::unix::ffi::OsStrExt;
    let watched = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9\nline.bin");
    fs::write(watched.path().join(name), b"latin-1").unwrap();
    let b = Bench::new().await;
    let src = DirFactory
        .build(&dir(watched.path(), ""), data.path())
        .unwrap();
    let run = b.start(src.clone());
    assert_eq!(b.names(1).await, ["caf\u{fffd}\nline.bin"]);
    run.stop().await;
    let run = b.start(src);
    b.nothing_more().await;
    run.stop().await;
}
