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
    let cfg = dir.path().join("node.toml");
    fs::write(
        &cfg,
        "version = 1\n[node]\nname = \"n\"\ndata_dir = \"state\"\n[transport]\ntype = \"memory\"\n\
         [sources.inbox]\ntype = \"dir\"\npath = \"inbox\"\nsettle = \"200ms\"\npoll_interval = \"100ms\"\n\
         [workers.hash]\ntype = \"hash\"\n\
         [workers.pe]\ntype = \"pe\"\nfilter = { mime = [\"application/x-dosexec\", \"application/vnd.microsoft.portable-executable\"] }\n\
         [workers.elf]\ntype = \"elf\"\nfilter = { mime = [\"application/x-executable\", \"application/x-sharedlib\"], max_size = 100000000 }\n\
         [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n",
    )
    .unwrap();
    let node = start_node(&cfg);
    let db = dir.path().join("results.db");
    let count = || if db.exists() { rows(&db).len() } else { 0 };
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
