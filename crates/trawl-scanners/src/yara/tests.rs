use super::*;
use std::fs;
use trawl_core::{BlobRef, PayloadEvent, SourceInfo, SourceKind};

/// EICAR, assembled at run time so no test file in the repository is flagged.
pub(crate) fn eicar() -> Vec<u8> {
    let mut s = String::from("X5O!P%@AP[4\\PZX54(P^)7CC)7}$");
    s.push_str("EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*");
    s.into_bytes()
}

const RULES: &str = r#"
rule Eicar : test av {
  meta:
    author = "trawl"
    score = 50
    ok = true
  strings:
    $a = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE"
  condition:
    $a
}
rule NamedExe {
  condition:
    extension == "exe" and filename matches /^dropper/ and filetype == "EXE"
}
"#;

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn event(name: &str) -> PayloadEvent {
    let mut e = PayloadEvent::new_root(
        String::new(),
        0,
        BlobRef::Store(String::new()),
        SourceInfo {
            kind: SourceKind::Cli,
            sensor: "t".into(),
            path: Some(format!("/in/{name}")),
        },
    );
    e.meta.filename = Some(name.into());
    e
}

fn params() -> YaraParams {
    YaraParams {
        rules: String::new(),
        fast: false,
        max_strings: 2,
        max_match_bytes: 8,
    }
}

fn scanner_for(text: &str) -> (tempfile::TempDir, YaraScanner) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("r.yar"), text).unwrap();
    let compiled = compile(dir.path()).unwrap();
    let s = YaraScanner::new(
        "yara".into(),
        dir.path().to_path_buf(),
        compiled,
        std::time::Duration::from_secs(5),
        &params(),
    );
    (dir, s)
}

#[test]
fn eicar_matches_with_meta_tags_and_bounded_strings() {
    let (_d, s) = scanner_for(RULES);
    let data = eicar();
    let out = s
        .scan(&ScanInput::new(&event("eicar.com"), &data, TIMEOUT))
        .unwrap();
    assert_eq!(out.matches, [RuleMatch::new("Eicar", ["test", "av"])]);
    let out = out.data;
    assert_eq!(out["match_count"], 1);
    let m = &out["matches"][0];
    assert_eq!(m["rule"], "Eicar");
    assert_eq!(m["namespace"], "r");
    assert_eq!(m["tags"], json!(["test", "av"]));
    assert_eq!(
        m["meta"],
        json!({"author": "trawl", "score": 50, "ok": true})
    );
    assert_eq!(m["strings"][0]["identifier"], "$a");
    assert_eq!(m["strings"][0]["offset"], 28);
    assert_eq!(m["strings"][0]["length"], 34);
    assert_eq!(
        m["strings"][0]["data"], "EICAR-ST",
        "data is cut to max_match_bytes"
    );
}

#[test]
fn externals_are_set_per_payload() {
    let (_d, s) = scanner_for(RULES);
    let mut pe = b"MZ".to_vec();
    pe.resize(256, 0);
    // e_lfanew -> "PE\0\0" so that content sniffing calls it an executable.
    pe[0x3c] = 0x80;
    pe[0x80..0x84].copy_from_slice(b"PE\0\0");
    let hit = s
        .scan(&ScanInput::new(&event("dropper.EXE"), &pe, TIMEOUT))
        .unwrap()
        .data;
    assert_eq!(hit["matches"][0]["rule"], "NamedExe", "{hit}");
    let miss = s
        .scan(&ScanInput::new(&event("report.exe"), &pe, TIMEOUT))
        .unwrap()
        .data;
    assert_eq!(miss["match_count"], 0);
}

#[test]
fn a_nul_in_a_name_neither_blinds_nor_fails_the_scan() {
    let (_d, s) = scanner_for(
        "rule Named { condition: filename matches /^eicar.*\\.com$/ and extension == \"com\" }\n\
         rule Body { strings: $a = \"EICAR-STANDARD\" condition: $a }",
    );
    let data = eicar();
    let mut e = event("eicar\0\0.com");
    e.source.path = Some("/in/a.zip!eicar\0\0.com".into());
    let out = s.scan(&ScanInput::new(&e, &data, TIMEOUT)).unwrap().data;
    let rules: Vec<&str> = out["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["Named", "Body"], "{out}");
}

#[test]
fn many_matches_are_counted_but_only_max_strings_listed() {
    let (_d, s) = scanner_for("rule A { strings: $x = \"ab\" condition: $x }");
    let data = b"ab ab ab ab ab".to_vec();
    let out = s
        .scan(&ScanInput::new(&event("x"), &data, TIMEOUT))
        .unwrap()
        .data;
    assert_eq!(out["matches"][0]["string_matches"], 5);
    assert_eq!(out["matches"][0]["strings"].as_array().unwrap().len(), 2);
}

#[test]
fn ruleset_hash_is_stable_and_follows_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.yar");
    fs::write(&f, RULES).unwrap();
    let h1 = compile(&f).unwrap().hash;
    assert_eq!(h1, compile(&f).unwrap().hash);
    fs::write(&f, format!("{RULES}\nrule Extra {{ condition: false }}")).unwrap();
    assert_ne!(h1, compile(&f).unwrap().hash);
}

#[test]
fn bad_rule_files_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("good.yar"), RULES).unwrap();
    fs::write(
        dir.path().join("bad.yar"),
        "rule Ok { condition: true }\n\nrule Broken {\n  condition: $nope\n}\n",
    )
    .unwrap();
    let e = compile(dir.path()).unwrap_err().to_string();
    assert!(e.contains("bad.yar:5:"), "{e}");

    let empty = dir.path().join("empty.yar");
    fs::write(&empty, "").unwrap();
    match check(dir.path()).unwrap_err() {
        RulesError::Compile(problems) => {
            assert_eq!(problems.len(), 2, "{problems:?}");
            assert!(problems.iter().any(|p| p.contains("bad.yar:5:")));
            assert!(problems
                .iter()
                .any(|p| p.contains("empty.yar: rules file is empty")));
        }
        other => panic!("{other}"),
    }
    assert!(matches!(compile(&empty), Err(RulesError::EmptyFile(_))));
    let comments = dir.path().join("c.yar");
    fs::write(&comments, "// nothing here\n").unwrap();
    assert!(matches!(compile(&comments), Err(RulesError::NoRules(_))));
    assert!(matches!(
        compile(&dir.path().join("missing")),
        Err(RulesError::NotFound(_))
    ));
    let nofiles = tempfile::tempdir().unwrap();
    assert!(matches!(
        compile(nofiles.path()),
        Err(RulesError::NoRuleFiles(_))
    ));
}

#[test]
fn scanning_in_parallel_shares_one_ruleset() {
    let (_d, s) = scanner_for(RULES);
    let s = Arc::new(s);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let data = eicar();
                (0..50)
                    .map(|_| {
                        s.scan(&ScanInput::new(&event("e"), &data, TIMEOUT))
                            .unwrap()
                            .matches
                            .len() as u64
                    })
                    .sum::<u64>()
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 200);
}

/// What a scan of `data` matched, and the ruleset it says it used.
fn rules_hit(s: &YaraScanner, data: &[u8]) -> (Vec<String>, Option<String>) {
    let out = s
        .scan(&ScanInput::new(&event("f.bin"), data, TIMEOUT))
        .unwrap();
    let names = out.matches.into_iter().map(|m| m.rule).collect();
    (names, out.ruleset)
}

#[test]
fn changed_rules_load_once_settled_and_broken_ones_keep_the_old() {
    let (dir, s) = scanner_for(RULES);
    let file = dir.path().join("r.yar");
    let first = s.info().ruleset.unwrap();
    assert_eq!(s.reload(false), Reload::Unchanged, "nothing changed");
    let data = b"new-campaign-marker";
    assert_eq!(rules_hit(&s, data), (vec![], Some(first.clone())));

    fs::write(
        &file,
        format!(
            "{RULES}\nrule Campaign {{ strings: $a = \"new-campaign-marker\" condition: $a }}\n"
        ),
    )
    .unwrap();
    // The first look sees the change; the next, with the file unchanged, loads it.
    assert_eq!(s.reload(false), Reload::Unchanged);
    let Reload::Loaded { ruleset, rules } = s.reload(false) else {
        panic!("the settled change is loaded");
    };
    assert_ne!(ruleset, first);
    assert_eq!(rules, 3);
    assert_eq!(s.info().ruleset.as_deref(), Some(ruleset.as_str()));
    assert_eq!(
        rules_hit(&s, data),
        (vec!["Campaign".into()], Some(ruleset.clone()))
    );

    fs::write(&file, "rule Broken {\n  condition:\n    nosuchthing\n}\n").unwrap();
    s.reload(false);
    let Reload::Failed { errors } = s.reload(false) else {
        panic!("a broken file is reported");
    };
    assert!(
        errors.iter().any(|e| e.contains("r.yar:3:")),
        "file and line: {errors:?}"
    );
    assert_eq!(s.reload(false), Reload::Unchanged, "reported once");
    assert_eq!(
        rules_hit(&s, data),
        (vec!["Campaign".into()], Some(ruleset.clone())),
        "the previous rules stay in use"
    );

    // SIGHUP loads whatever is there now, settled or not.
    fs::write(&file, RULES).unwrap();
    assert!(matches!(s.reload(true), Reload::Loaded { rules: 2, .. }));
    assert_eq!(rules_hit(&s, data), (vec![], Some(first)));
}
