//! Executable facts and dispatch filters end to end: each worker group sees
//! only the payloads its filter names; the others are acknowledged untouched.

use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// A real PE32+ executable on this machine: a launcher that pip ships.
pub fn windows_exe() -> Vec<u8> {
    let out = run(Command::new("python3").args([
        "-c",
        "import os, pip._vendor.distlib as d; print(os.path.join(os.path.dirname(d.__file__), 't64.exe'))",
    ]));
    fs::read(stdout(&out).trim()).expect("pip's t64.exe launcher")
}

#[test]
fn filters_send_executables_to_pe_and_elf_only() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    fs::create_dir_all(&inbox).unwrap();
    fs::write(inbox.join("launcher.exe"), windows_exe()).unwrap();
    fs::copy("/bin/true", inbox.join("true")).unwrap();
    fs::write(inbox.join("notes.txt"), "just text\n").unwrap();
    // Claims to be a PE, is not one: an error result, not a crash.
    let mut broken = b"MZ".to_vec();
    broken.resize(64, 0);
    broken[0x3c..0x40].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    fs::write(inbox.join("broken.exe"), &broken).unwrap();
    let cfg = inbox_node_config(
        dir.path(),
        "[workers.hash]\ntype = \"hash\"\n\
         [workers.pe]\ntype = \"pe\"\nfilter = { mime = [\"application/x-dosexec\", \"application/vnd.microsoft.portable-executable\"] }\n\
         [workers.elf]\ntype = \"elf\"\nfilter = { mime = [\"application/x-executable\", \"application/x-sharedlib\"], max_size = 100000000 }\n\
         [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
    );
    let node = start_node(&cfg);
    let db = dir.path().join("results.db");
    let count = || rows(&db).len();
    // 4 hash + 2 pe (launcher, broken) + 1 elf.
    wait_for("7 results", Duration::from_secs(30), || count() >= 7);
    std::thread::sleep(Duration::from_millis(800));
    let out = node.terminate();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = rows(&db);
    assert_eq!(rows.len(), 7, "filtered-out payloads leave no result");
    let of = |worker: &str| -> Vec<&Row> { rows.iter().filter(|r| r.worker == worker).collect() };
    assert_eq!(of("hash").len(), 4);
    let pe = of("pe");
    let launcher = pe
        .iter()
        .find(|r| r.filename.as_deref() == Some("launcher.exe"))
        .unwrap();
    assert_eq!(launcher.outcome, "ok");
    assert_eq!(launcher.data["is_pe"], true);
    assert_eq!(launcher.data["imphash"].as_str().unwrap().len(), 32);
    let bad = pe
        .iter()
        .find(|r| r.filename.as_deref() == Some("broken.exe"))
        .unwrap();
    assert_eq!(bad.outcome, "error");
    assert!(bad.message.as_deref().unwrap().starts_with("malformed PE"));
    let elf = of("elf");
    assert_eq!(elf.len(), 1);
    assert_eq!(elf[0].filename.as_deref(), Some("true"));
    assert_eq!(elf[0].data["is_elf"], true);
}

/// `outer.zip` holds EICAR as `../../eicar.com` and `inner.zip`, which holds `deep.txt`.
fn nested_zip(path: &std::path::Path) {
    let script = r#"
import io, sys, zipfile
inner = io.BytesIO()
with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("deep.txt", "three levels down\n")
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("../../eicar.com", sys.stdin.buffer.read())
    z.writestr("inner.zip", inner.getvalue())
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&eicar()).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn unpacked_files_are_scanned_by_every_worker_with_their_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    fs::create_dir_all(&inbox).unwrap();
    nested_zip(&inbox.join("outer.zip"));
    let cfg = inbox_node_config(
        dir.path(),
        &format!(
            "[workers.extract]\ntype = \"extract\"\nmax_depth = 5\n\
             [workers.yara]\ntype = \"yara\"\nrules = \"{}\"\n\
             [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
            repo().join("rules").display()
        ),
    );
    let node = start_node(&cfg);
    let db = dir.path().join("results.db");
    // outer, eicar, inner, deep: each scanned by extract and yara.
    wait_for("8 results", Duration::from_secs(30), || {
        rows(&db).len() >= 8
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(node.terminate().status.success());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let lineage: Vec<(String, String, String, i64, String)> = conn
        .prepare("SELECT filename, payload_id, root_id, depth, source_kind FROM results WHERE worker = 'yara' ORDER BY depth, filename")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let names: Vec<(&str, i64)> = lineage.iter().map(|l| (l.0.as_str(), l.3)).collect();
    assert_eq!(
        names,
        [
            ("outer.zip", 0),
            ("../../eicar.com", 1),
            ("inner.zip", 1),
            ("deep.txt", 2)
        ]
    );
    let root = &lineage[0].1;
    assert!(
        lineage.iter().all(|l| &l.2 == root),
        "one tree: {lineage:?}"
    );
    assert!(lineage[1..].iter().all(|l| l.4 == "extracted"));
    let rows = rows(&db);
    let eicar = rows
        .iter()
        .find(|r| r.worker == "yara" && r.filename.as_deref() == Some("../../eicar.com"))
        .unwrap();
    assert!(
        eicar.data["match_count"].as_u64().unwrap() > 0,
        "the unpacked EICAR is matched"
    );
    assert!(!dir.path().join("eicar.com").exists() && !std::path::Path::new("/eicar.com").exists());
    let outer = rows
        .iter()
        .find(|r| r.worker == "extract" && r.filename.as_deref() == Some("outer.zip"))
        .unwrap();
    assert_eq!(outer.data["extracted"], 2);
}

#[test]
fn extraction_limits_hold_for_a_whole_archive_tree() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    fs::create_dir_all(&inbox).unwrap();
    // Three nested archives of eight files each: 27 files in the tree.
    let script = r#"
import io, sys, zipfile
inner = io.BytesIO()
with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z:
    for i in range(8):
        z.writestr(f"f{i}.txt", f"file {i}\n" * 20)
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    for name in ("a.zip", "b.zip", "c.zip"):
        z.writestr(name, inner.getvalue())
"#;
    run(Command::new("python3")
        .args(["-c", script])
        .arg(inbox.join("tree.zip")));
    let cfg = inbox_node_config(
        dir.path(),
        "[workers.extract]\ntype = \"extract\"\nmax_children = 10\n\
         [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
    );
    let node = start_node(&cfg);
    let db = dir.path().join("results.db");
    // The root, its 3 archives, and the 7 children left shared between them (2 each).
    wait_for("10 results", Duration::from_secs(30), || {
        rows(&db).len() >= 10
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(node.terminate().status.success());
    let rows = rows(&db);
    assert_eq!(
        rows.len(),
        10,
        "{:?}",
        rows.iter().map(|r| &r.filename).collect::<Vec<_>>()
    );
    let inner: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.filename
                .as_deref()
                .is_some_and(|n| n.ends_with(".zip") && n != "tree.zip")
        })
        .collect();
    assert_eq!(inner.len(), 3);
    for r in inner {
        assert_eq!(r.data["extracted"], 2, "{:?}", r.data);
        assert!(r.data["truncated_reason"]
            .as_str()
            .unwrap()
            .contains("reached for the archive tree"));
    }
}

/// Groups that run on another group's YARA matches (`filter.yara`): `pe` on
/// `PE_*` rules, `hash` on the `av` tag.
pub const ON_MATCHES: &str =
    "[workers.pe]\ntype = \"pe\"\nfilter = { yara = { rules = [\"PE_*\"] } }\n\
     [workers.hash]\ntype = \"hash\"\nfilter = { yara = { worker = \"yara\", tags = [\"av\"] } }\n";

/// A PE, EICAR, an ELF and text: each matched by a different rule, or none.
pub fn drop_match_corpus(inbox: &std::path::Path) {
    fs::write(inbox.join("launcher.exe"), windows_exe()).unwrap();
    fs::write(inbox.join("eicar.com"), eicar()).unwrap();
    fs::copy("/bin/true", inbox.join("true")).unwrap();
    fs::write(inbox.join("notes.txt"), "just text\n").unwrap();
}

/// Four yara results, and `pe` and `hash` each on the one payload its condition names.
pub fn assert_ran_on_matches_only(db: &std::path::Path) {
    wait_for("6 results", Duration::from_secs(60), || rows(db).len() >= 6);
    std::thread::sleep(Duration::from_millis(800));
    let rows = rows(db);
    let of = |worker: &str| -> Vec<&str> {
        let mut names: Vec<&str> = rows
            .iter()
            .filter(|r| r.worker == worker)
            .map(|r| r.filename.as_deref().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        of("yara"),
        ["eicar.com", "launcher.exe", "notes.txt", "true"]
    );
    assert_eq!(of("pe"), ["launcher.exe"]);
    assert_eq!(of("hash"), ["eicar.com"]);
    let pe = rows.iter().find(|r| r.worker == "pe").unwrap();
    assert_eq!(
        pe.data["is_pe"], true,
        "scanned from the payload's own bytes"
    );
    let hash = rows.iter().find(|r| r.worker == "hash").unwrap();
    assert_eq!(hash.sha256, hash.data["sha256"], "{:?}", hash.data);
    assert_eq!(rows.len(), 6);
}

#[test]
fn a_group_can_run_only_on_what_yara_matched() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    fs::create_dir_all(&inbox).unwrap();
    drop_match_corpus(&inbox);
    let cfg = inbox_node_config(
        dir.path(),
        &format!(
            "[workers.yara]\ntype = \"yara\"\nrules = \"{}\"\n{ON_MATCHES}\
             [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n\
             [connectors.lines]\ntype = \"jsonl\"\npath = \"results.jsonl\"\n",
            repo().join("rules").display()
        ),
    );
    let node = start_node(&cfg);
    assert_ran_on_matches_only(&dir.path().join("results.db"));
    let out = node.terminate();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 6);
    assert!(
        !lines.contains("payload_event"),
        "the payload travels to the groups, not to the stores"
    );
}

#[test]
fn members_of_a_7z_archive_are_scanned_like_carved_files() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    let work = dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("eicar.com"), eicar()).unwrap();
    let cfg = inbox_node_config(
        dir.path(),
        &format!(
            "[workers.extract]\ntype = \"extract\"\n\
             [workers.yara]\ntype = \"yara\"\nrules = \"{}\"\n\
             [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
            repo().join("rules").display()
        ),
    );
    // Made beside the inbox, then moved in whole.
    run(Command::new("7zz")
        .current_dir(&work)
        .args(["a", "-bd", "bundle.7z", "eicar.com"]));
    fs::rename(work.join("bundle.7z"), inbox.join("bundle.7z")).unwrap();
    let node = start_node(&cfg);
    let db = dir.path().join("results.db");
    wait_for("4 results", Duration::from_secs(30), || {
        rows(&db).len() >= 4
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(node.terminate().status.success());
    let rows = rows(&db);
    assert_eq!(rows.len(), 4);
    let bundle = rows
        .iter()
        .find(|r| r.worker == "extract" && r.filename.as_deref() == Some("bundle.7z"))
        .unwrap();
    assert_eq!(
        (
            bundle.data["archive"].as_str(),
            bundle.data["extracted"].as_u64()
        ),
        (Some("7z"), Some(1))
    );
    let hit = rows
        .iter()
        .find(|r| r.worker == "yara" && r.filename.as_deref() == Some("eicar.com"))
        .unwrap();
    assert_eq!(hit.data["matches"][0]["rule"], "EICAR_Test_File");
    assert_eq!(hit.sha256, trawl_core::sha256_hex(&eicar()));
}

#[test]
fn archives_beyond_the_in_memory_budget_are_all_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    fs::create_dir_all(&inbox).unwrap();
    // 30 archives of 200 KB against a 1 MiB budget: the extractor publishes
    // members while the archives queued for it hold the budget.
    let script = r#"
import os, sys, zipfile
for i in range(30):
    with zipfile.ZipFile(os.path.join(sys.argv[1], f"a{i:02}.zip"), "w", zipfile.ZIP_STORED) as z:
        z.writestr("member.bin", os.urandom(200_000))
"#;
    run(Command::new("python3").args(["-c", script]).arg(&inbox));
    let cfg = inbox_node_config_on(
        dir.path(),
        "type = \"memory\"\nmax_bytes = 1048576",
        "[workers.extract]\ntype = \"extract\"\n[workers.hash]\ntype = \"hash\"\n\
         [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
    );
    let node = start_node(&cfg);
    let db = dir.path().join("results.db");
    // 30 archives and 30 members, each by both groups.
    wait_for("120 results", Duration::from_secs(60), || {
        rows(&db).len() >= 120
    });
    assert!(node.terminate().status.success());
    assert_eq!(rows(&db).len(), 120);
}
