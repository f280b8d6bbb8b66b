//! Every bad input gives a one-line error or an error record, never a panic.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use crate::harness::*;

fn scan_cmd(dir: &Path) -> std::process::Command {
    let mut c = trawl();
    c.current_dir(dir)
        .arg("scan")
        .arg("--rules")
        .arg(repo().join("rules"));
    c
}

/// The single line trawl prints for a fatal error.
fn one_line_error(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    let err = stderr(out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("trawl: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_owned()
}

#[test]
fn unreadable_file_becomes_an_error_record_and_the_rest_is_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("ok.txt"), b"fine").unwrap();
    let locked = data.join("locked.bin");
    fs::write(&locked, b"secret").unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = scan_cmd(dir.path());
    cmd.args(["data", "--db", "out.db"]);
    let out = run(&mut without_root_powers(cmd));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("locked.bin: permission denied"),
        "{}",
        stderr(&out)
    );
    let rows = rows(&dir.path().join("out.db"));
    let locked_rows: Vec<_> = rows
        .iter()
        .filter(|r| r.filename.as_deref() == Some("locked.bin"))
        .collect();
    assert_eq!(locked_rows.len(), 1);
    assert_eq!(locked_rows[0].worker, "ingest");
    assert_eq!(locked_rows[0].outcome, "error");
    assert_eq!(locked_rows[0].message.as_deref(), Some("permission denied"));
    assert_eq!(
        rows.iter()
            .filter(|r| r.filename.as_deref() == Some("ok.txt"))
            .count(),
        3
    );
}

#[test]
fn symlinks_are_not_followed_by_default_and_loops_never_hang() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("elsewhere.txt"), b"outside the tree").unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("inside.txt"), b"inside").unwrap();
    symlink(outside.path().join("elsewhere.txt"), data.join("link-out")).unwrap();
    symlink(outside.path(), data.join("dir-out")).unwrap();
    symlink(&data, data.join("loop")).unwrap();
    symlink(data.join("missing"), data.join("dangling")).unwrap();

    let out = run(scan_cmd(dir.path()).args(["data", "--db", "a.db", "--workers", "hash"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = rows(&dir.path().join("a.db"));
    assert_eq!(rows.len(), 1, "only the regular file");
    assert_eq!(rows[0].filename.as_deref(), Some("inside.txt"));

    let out = run(scan_cmd(dir.path()).args([
        "data",
        "--db",
        "b.db",
        "--workers",
        "hash",
        "--follow-symlinks",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("symlink loop"), "{}", stderr(&out));
    let rows = crate::harness::rows(&dir.path().join("b.db"));
    use sha2::Digest;
    let outside_sha = hex::encode(sha2::Sha256::digest(b"outside the tree"));
    assert!(rows.iter().any(|r| r.worker == "hash"
        && r.filename.as_deref() == Some("link-out")
        && r.data["sha256"] == outside_sha.as_str()));
    assert!(rows.iter().any(
        |r| r.worker == "ingest" && r.message.as_deref() == Some("symlink loop, not followed")
    ));
}

#[test]
fn a_path_named_on_the_command_line_that_cannot_be_read_is_an_error_and_the_rest_is_scanned() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("real"), b"x").unwrap();
    let out = run(scan_cmd(dir.path()).args(["real", "gone", "--db", "o.db", "--workers", "hash"]));
    let line = one_line_error(&out);
    assert_eq!(
        line,
        "trawl: error: gone: No such file or directory (os error 2)"
    );
    // The path that could be read was scanned all the same.
    let rows = rows(&dir.path().join("o.db"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].worker.as_str(), rows[0].outcome.as_str()),
        ("hash", "ok")
    );
    // Nothing that can be read: nothing is scanned, and the exit says so.
    let out = run(scan_cmd(dir.path()).args(["/no/such/path", "--db", "n.db"]));
    assert!(one_line_error(&out).contains("/no/such/path"));
    assert!(!dir.path().join("n.db").exists());
}

#[test]
fn broken_rules_are_startup_errors_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("x"), b"x").unwrap();
    let empty = dir.path().join("empty.yar");
    fs::write(&empty, b"").unwrap();
    let out = run(trawl()
        .current_dir(dir.path())
        .args(["scan", "x", "--rules", "empty.yar"]));
    let line = one_line_error(&out);
    assert!(
        line.contains("empty.yar") && line.contains("is empty"),
        "{line}"
    );

    let bad = dir.path().join("bad.yar");
    fs::write(
        &bad,
        "rule A {\n  strings:\n    $a = \"x\"\n  condition:\n    $a and $b\n}\n",
    )
    .unwrap();
    let out = run(trawl()
        .current_dir(dir.path())
        .args(["scan", "x", "--rules", "bad.yar"]));
    let line = one_line_error(&out);
    assert!(line.contains("bad.yar:6:") && line.contains("$b"), "{line}");

    let out = run(trawl()
        .current_dir(dir.path())
        .args(["rules", "check", "bad.yar"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .lines()
            .next()
            .unwrap()
            .contains("bad.yar:6: undefined string"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("trawl.db").exists() || rows(&dir.path().join("trawl.db")).is_empty());
}

#[test]
fn unknown_config_key_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    fs::write(
        &cfg,
        "version = 1\n[workers.h]\ntype = 'hash'\nthreads = 4\n",
    )
    .unwrap();
    let out = run(trawl().args(["config", "check"]).arg(&cfg));
    let line = one_line_error(&out);
    assert!(
        line.contains("node.toml") && line.contains("workers.h") && line.contains("threads"),
        "{line}"
    );

    fs::write(&cfg, "version = 1\n[node]\nname = 'x'\ncolour = 'blue'\n").unwrap();
    let out = run(trawl().args(["config", "check"]).arg(&cfg));
    let line = one_line_error(&out);
    assert!(
        line.contains("node.toml") && line.contains("colour"),
        "{line}"
    );
}

#[test]
fn unusable_db_paths_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("x"), b"x").unwrap();
    fs::create_dir(dir.path().join("adir")).unwrap();
    let scan_into = |db: &str| {
        run(trawl()
            .current_dir(dir.path())
            .args(["scan", "x", "--workers", "hash", "--db", db]))
    };
    for (db, expect) in [
        ("adir", "is a directory"),
        ("x/t.db", "x/t.db: cannot make its folder: x is a file"),
    ] {
        let line = one_line_error(&scan_into(db));
        assert!(line.contains(expect), "{line}");
    }
    // A folder that is missing is made.
    let out = scan_into("new/dir/t.db");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rows(&dir.path().join("new/dir/t.db")).len(), 1);
    let ro = dir.path().join("readonly");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let mut cmd = trawl();
    cmd.current_dir(dir.path())
        .args(["scan", "x", "--workers", "hash", "--db", "readonly/t.db"]);
    let out = run(&mut without_root_powers(cmd));
    let line = one_line_error(&out);
    assert!(line.contains("readonly/t.db"), "{line}");
}

#[test]
fn a_file_where_a_folder_is_expected_and_the_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inbox");
    fs::write(&file, b"not a folder").unwrap();
    let cfg = dir.path().join("node.toml");
    fs::write(
        &cfg,
        "version = 1\n[sources.in]\ntype = 'dir'\npath = 'inbox'\n[workers.h]\ntype = 'hash'\n[connectors.c]\ntype = 'sqlite'\npath = 't.db'\n",
    )
    .unwrap();
    let out = run(trawl().args(["node", "--config"]).arg(&cfg));
    let line = one_line_error(&out);
    assert!(
        line.contains("sources.in") && line.contains("is a file, expected a directory"),
        "{line}"
    );

    let out = run(trawl().current_dir(dir.path()).args([
        "scan",
        "inbox",
        "--workers",
        "hash",
        "--jsonl",
        ".",
    ]));
    let line = one_line_error(&out);
    assert!(line.contains("is a directory"), "{line}");
}
