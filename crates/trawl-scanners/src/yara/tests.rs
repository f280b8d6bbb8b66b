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

/// Compiled without the user's cache, so each test compiles what it wrote.
fn compile(path: &Path, engine: EngineChoice) -> Result<CompiledRules, RulesError> {
    compile_with(path, engine, None)
}

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

fn params(engine: EngineChoice) -> YaraParams {
    YaraParams {
        rules: String::new(),
        engine,
        fast: false,
        max_strings: 2,
        max_match_bytes: 8,
    }
}

fn scanner_for(engine: EngineChoice, text: &str) -> (tempfile::TempDir, YaraScanner) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("r.yar"), text).unwrap();
    let compiled = compile(dir.path(), engine).unwrap();
    assert_eq!(
        compiled.engine.name(),
        match engine {
            EngineChoice::Libyara => "libyara",
            _ => "yara-x",
        }
    );
    let s = YaraScanner::new(
        "yara".into(),
        dir.path().to_path_buf(),
        compiled,
        std::time::Duration::from_secs(5),
        &params(engine),
    );
    (dir, s)
}

/// A scanner of `compiled` (read from `path`) with `engine`'s defaults.
fn yara_scanner(path: &Path, compiled: CompiledRules, engine: EngineChoice) -> YaraScanner {
    YaraScanner::new(
        "yara".into(),
        path.into(),
        compiled,
        TIMEOUT,
        &params(engine),
    )
}

/// Each test below, once per engine.
macro_rules! on_both_engines {
    ($($test:ident),* $(,)?) => {
        mod libyara_engine {
            $(#[test] fn $test() { super::$test(super::EngineChoice::Libyara) })*
        }
        mod yara_x_engine {
            $(#[test] fn $test() { super::$test(super::EngineChoice::YaraX) })*
        }
    };
}

on_both_engines!(
    eicar_matches_with_meta_tags_and_bounded_strings,
    externals_are_set_per_payload,
    a_nul_in_a_name_neither_blinds_nor_fails_the_scan,
    many_matches_are_counted_but_only_max_strings_listed,
    ruleset_hash_is_stable_and_follows_the_rules,
    bad_rule_files_are_reported_with_file_and_line,
    scanning_in_parallel_shares_one_ruleset,
    changed_rules_load_once_settled_and_broken_ones_keep_the_old,
    a_runaway_condition_stops_at_the_timeout,
);

fn a_runaway_condition_stops_at_the_timeout(engine: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("slow.yar"),
        "rule Slow { condition: for all i in (0..filesize - 1) : (for all j in (0..filesize - 1) : (uint8(i) + uint8(j) < 1000)) }",
    )
    .unwrap();
    let compiled = compile(dir.path(), engine).unwrap();
    let timeout = std::time::Duration::from_secs(1);
    let s = YaraScanner::new(
        "yara".into(),
        dir.path().into(),
        compiled,
        timeout,
        &params(engine),
    );
    let data = vec![7u8; 1 << 16];
    let start = std::time::Instant::now();
    let e = s
        .scan(&ScanInput::new(&event("big"), &data, timeout))
        .unwrap_err();
    assert!(matches!(e, ScanError::Timeout(_)), "{e}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

fn eicar_matches_with_meta_tags_and_bounded_strings(engine: EngineChoice) {
    let (_d, s) = scanner_for(engine, RULES);
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

fn externals_are_set_per_payload(engine: EngineChoice) {
    let (_d, s) = scanner_for(engine, RULES);
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

fn a_nul_in_a_name_neither_blinds_nor_fails_the_scan(engine: EngineChoice) {
    let (_d, s) = scanner_for(
        engine,
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

fn many_matches_are_counted_but_only_max_strings_listed(engine: EngineChoice) {
    let (_d, s) = scanner_for(engine, "rule A { strings: $x = \"ab\" condition: $x }");
    let data = b"ab ab ab ab ab".to_vec();
    let out = s
        .scan(&ScanInput::new(&event("x"), &data, TIMEOUT))
        .unwrap()
        .data;
    assert_eq!(out["matches"][0]["string_matches"], 5);
    assert_eq!(out["matches"][0]["strings"].as_array().unwrap().len(), 2);
}

fn ruleset_hash_is_stable_and_follows_the_rules(engine: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.yar");
    fs::write(&f, RULES).unwrap();
    let h1 = compile(&f, engine).unwrap().hash;
    assert_eq!(h1, compile(&f, engine).unwrap().hash);
    fs::write(&f, format!("{RULES}\nrule Extra {{ condition: false }}")).unwrap();
    assert_ne!(h1, compile(&f, engine).unwrap().hash);
}

fn bad_rule_files_are_reported_with_file_and_line(engine: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("good.yar"), RULES).unwrap();
    fs::write(
        dir.path().join("bad.yar"),
        "rule Ok { condition: true }\n\nrule Broken {\n  condition: $nope\n}\n",
    )
    .unwrap();
    // libyara names the rule's end, YARA-X the line of the fault.
    let line = if engine == EngineChoice::Libyara {
        5
    } else {
        4
    };
    let at = format!("bad.yar:{line}:");
    let e = compile(dir.path(), engine).unwrap_err().to_string();
    assert!(e.contains(&at), "{e}");

    let empty = dir.path().join("empty.yar");
    fs::write(&empty, "").unwrap();
    match compile(dir.path(), engine).unwrap_err() {
        RulesError::Compile(problems) => {
            assert_eq!(problems.len(), 2, "{problems:?}");
            assert!(problems.iter().any(|p| p.contains(&at)));
            assert!(problems
                .iter()
                .any(|p| p.contains("empty.yar: rules file is empty")));
        }
        other => panic!("{other}"),
    }
    assert!(matches!(
        compile(&empty, engine),
        Err(RulesError::EmptyFile(_))
    ));
    let comments = dir.path().join("c.yar");
    fs::write(&comments, "// nothing here\n").unwrap();
    assert!(matches!(
        compile(&comments, engine),
        Err(RulesError::NoRules(_))
    ));
    assert!(matches!(
        compile(&dir.path().join("missing"), engine),
        Err(RulesError::NotFound(_))
    ));
    let nofiles = tempfile::tempdir().unwrap();
    assert!(matches!(
        compile(nofiles.path(), engine),
        Err(RulesError::NoRuleFiles(_))
    ));
}

fn scanning_in_parallel_shares_one_ruleset(engine: EngineChoice) {
    let (_d, s) = scanner_for(engine, RULES);
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

fn changed_rules_load_once_settled_and_broken_ones_keep_the_old(engine: EngineChoice) {
    let (dir, s) = scanner_for(engine, RULES);
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

/// The bytes every equivalence rule is tried on: a real PE and ELF, EICAR,
/// and a marker in the encodings rules look for.
fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let marker = b"trawl-equivalence-marker";
    let mut encoded = b"head ".to_vec();
    encoded.extend_from_slice(marker);
    encoded.extend(marker.iter().flat_map(|&b| [b, 0]));
    encoded.extend(marker.iter().map(|b| b ^ 0x5a));
    encoded.extend_from_slice(b" dHJhd2wtZXF1aXZhbGVuY2UtbWFya2Vy ");
    encoded.extend_from_slice(b"TRAWL-EQUIVALENCE-MARKER trawl-equivalence-marker.");
    vec![
        ("launcher.exe", crate::samples::windows_launcher()),
        ("sh", fs::read("/bin/sh").expect("/bin/sh")),
        ("eicar.com", eicar()),
        ("encoded.txt", encoded),
        ("empty", Vec::new()),
    ]
}

/// Rules over the hash module, whose digests are of the samples themselves
/// (libyara is built without it: these run on YARA-X alone).
fn hash_rules() -> String {
    let pe = crate::samples::windows_launcher();
    let sh = fs::read("/bin/sh").unwrap();
    let pe_sha256 = trawl_core::sha256_hex(&pe);
    let sh_md5 = crate::hash::digest("md5", &sh[..64]).unwrap();
    format!(
        r#"
import "hash"
rule PeDigest {{ condition: hash.sha256(0, filesize) == "{pe_sha256}" }}
rule ElfHead {{ condition: hash.md5(0, 64) == "{sh_md5}" and uint32(0) == 0x464c457f }}
"#
    )
}

/// Rules over the pe, elf and math modules, every kind of string and the
/// externals.
const MODULE_RULES: &str = r#"
import "pe"
import "elf"
import "math"

rule Pe64 : exe windows {
  meta:
    family = "launcher"
    weight = 3
    real = true
  condition:
    pe.is_pe and pe.is_64bit() and pe.machine == pe.MACHINE_AMD64 and
    pe.number_of_sections > 2 and pe.imports("kernel32.dll") and
    for any s in pe.sections : (s.name == ".text") and pe.entry_point > 0
}
rule ElfExe : exe linux {
  condition:
    elf.machine == elf.EM_X86_64 and (elf.type == elf.ET_DYN or elf.type == elf.ET_EXEC) and
    elf.number_of_sections > 5 and for any s in elf.sections : (s.name == ".text")
}
rule Dense { condition: filesize > 1024 and math.entropy(0, filesize) > 5.0 and math.mean(0, 512) < 200 }
rule Plain { strings: $a = "trawl-equivalence-marker" condition: #a == 2 and @a[1] == 5 and !a[1] == 24 }
rule Encodings {
  strings:
    $w = "trawl-equivalence-marker" wide
    $x = "trawl-equivalence-marker" xor(0x50-0x5f)
    $b = "trawl-equivalence-marker" base64
    $n = "trawl-equivalence-marker" nocase fullword
  condition:
    all of them
}
rule Hex { strings: $h = { 4D 5A ?? 00 [1-4] 00 ( 00 | 01 ) } condition: $h at 0 }
rule Regex {
  strings:
    $r = /This program cannot be run in (DOS|Win32) mode/
    $s = /EICAR-[A-Z]{8}-ANTIVIRUS/ nocase
    $k = /kernel32\.dll/i
  condition:
    any of them
}
rule Named { condition: extension == "exe" and filename matches /^launcher/ and filetype == "EXE" and filepath contains "/in/" }
private rule Hidden { condition: filesize > 0 }
global rule Any { condition: true }
rule UsesHidden { condition: Hidden and filesize < 100 }
"#;

/// What `engine` reports for each sample under the rules in `dir`.
fn reports(engine: EngineChoice, dir: &Path) -> Vec<(String, Value)> {
    let compiled = compile(dir, engine).unwrap();
    let mut p = params(engine);
    p.max_strings = 1000;
    p.max_match_bytes = 1000;
    let s = YaraScanner::new("yara".into(), dir.to_path_buf(), compiled, TIMEOUT, &p);
    samples()
        .into_iter()
        .map(|(name, data)| {
            let out = s
                .scan(&ScanInput::new(&event(name), &data, TIMEOUT))
                .unwrap();
            (name.to_owned(), out.data)
        })
        .collect()
}

fn same_reports(dir: &Path) -> Vec<(String, Value)> {
    let libyara = reports(EngineChoice::Libyara, dir);
    let yara_x = reports(EngineChoice::YaraX, dir);
    for ((name, a), (_, b)) in libyara.iter().zip(&yara_x) {
        assert_eq!(a, b, "{name}: libyara (left) and YARA-X (right) differ");
    }
    libyara
}

fn rule_names(report: &Value) -> Vec<&str> {
    report["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["rule"].as_str().unwrap())
        .collect()
}

#[test]
fn both_engines_report_the_same_on_module_string_and_external_rules() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("all.yar"), MODULE_RULES).unwrap();
    let reports = same_reports(dir.path());
    let hit = |name: &str| {
        let (_, r) = reports.iter().find(|(n, _)| n == name).unwrap();
        rule_names(r)
    };
    // Each rule is seen to match, so equal reports are not equally empty.
    assert_eq!(
        hit("launcher.exe"),
        ["Pe64", "Dense", "Hex", "Regex", "Named", "Any"]
    );
    assert_eq!(hit("sh"), ["ElfExe", "Dense", "Any"]);
    assert_eq!(hit("eicar.com"), ["Regex", "Any", "UsesHidden"]);
    assert_eq!(hit("encoded.txt"), ["Plain", "Encodings", "Any"]);
    assert_eq!(hit("empty"), ["Any"]);
}

#[test]
fn the_hash_module_runs_on_yara_x_and_auto_takes_it_there() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("hash.yar"), hash_rules()).unwrap();
    let hits: Vec<(String, Vec<String>)> = reports(EngineChoice::Auto, dir.path())
        .into_iter()
        .map(|(name, r)| {
            let rules = rule_names(&r).into_iter().map(str::to_owned).collect();
            (name, rules)
        })
        .collect();
    assert_eq!(
        hits[0],
        ("launcher.exe".to_owned(), vec!["PeDigest".to_owned()])
    );
    assert_eq!(hits[1], ("sh".to_owned(), vec!["ElfHead".to_owned()]));
    assert!(
        hits[2..].iter().all(|(_, rules)| rules.is_empty()),
        "{hits:?}"
    );
    let e = compile(dir.path(), EngineChoice::Libyara)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hash"),
        "libyara says which module it lacks: {e}"
    );
    assert!(e.contains("built without OpenSSL"), "and why: {e}");
}

#[test]
fn libyara_says_its_pe_signature_fields_are_left_out_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signed.yar");
    fs::write(
        &file,
        "import \"pe\"\nrule Signed {\n  condition:\n    pe.number_of_signatures > 0\n}\n",
    )
    .unwrap();
    let e = compile(&file, EngineChoice::Libyara)
        .unwrap_err()
        .to_string();
    assert!(e.contains("signed.yar:4:"), "{e}");
    assert!(e.contains("number_of_signatures"), "{e}");
    assert!(e.contains("built without OpenSSL"), "{e}");
    assert!(compile(&file, EngineChoice::YaraX).is_ok());
    // Other mistakes get no such hint.
    fs::write(
        &file,
        "import \"pe\"\nrule R { condition: pe.no_such_field }\n",
    )
    .unwrap();
    let e = compile(&file, EngineChoice::Libyara)
        .unwrap_err()
        .to_string();
    assert!(!e.contains("OpenSSL"), "{e}");
}

#[test]
fn both_engines_report_the_same_on_the_shipped_rules() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let reports = same_reports(&shipped);
    let (_, pe) = &reports[0];
    assert!(rule_names(pe).contains(&"PE_Executable"), "{pe}");
}

#[test]
fn auto_takes_yara_x_and_falls_back_to_libyara_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.yar");
    fs::write(&file, RULES).unwrap();
    let compiled = compile(&file, EngineChoice::Auto).unwrap();
    assert_eq!(compiled.engine.name(), "yara-x");
    assert!(compiled.fallback.is_none());

    // `entrypoint` is deprecated in libyara and gone from YARA-X.
    let text = format!("{RULES}\nrule Old {{\n  condition:\n    entrypoint >= 0\n}}\n");
    fs::write(&file, &text).unwrap();
    let line = 1 + text.lines().position(|l| l.contains("entrypoint")).unwrap();
    let at = format!("r.yar:{line}:");
    let compiled = compile(&file, EngineChoice::Auto).unwrap();
    assert_eq!(compiled.engine.name(), "libyara");
    assert_eq!(compiled.rule_count, 3);
    let why = compiled.fallback.unwrap();
    assert!(
        why.contains(&at),
        "file and line of what YARA-X refused: {why}"
    );
    let compiled = compile(&file, EngineChoice::Auto).unwrap();
    let s = yara_scanner(&file, compiled, EngineChoice::Auto);
    assert_eq!(s.info().version, "yara-1/libyara-4.5.5");

    let e = compile(&file, EngineChoice::YaraX).unwrap_err().to_string();
    assert!(e.contains(&at), "{e}");
    // Broken for both: the rules are reported broken, not half loaded.
    fs::write(&file, "rule B { condition: nosuch }").unwrap();
    let e = compile(&file, EngineChoice::Auto).unwrap_err().to_string();
    assert!(e.contains("r.yar:1:"), "{e}");
}

#[test]
fn the_worker_version_names_the_engine() {
    let (_d, s) = scanner_for(EngineChoice::YaraX, RULES);
    assert_eq!(s.info().version, "yara-1/yara-x-1.22.1");
    let (_d, s) = scanner_for(EngineChoice::Libyara, RULES);
    assert_eq!(s.info().version, "yara-1/libyara-4.5.5");
}

#[test]
fn yara_x_loads_what_it_compiled_while_the_files_stay_the_same() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let file = dir.path().join("r.yar");
    fs::write(&file, RULES).unwrap();
    let first = compile_with(&file, EngineChoice::YaraX, Some(&cache)).unwrap();
    let kept: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let again = compile_with(&file, EngineChoice::YaraX, Some(&cache)).unwrap();
    assert_eq!(again.hash, first.hash);
    assert_eq!(again.rule_count, 2);
    let s = yara_scanner(&file, again, EngineChoice::YaraX);
    assert_eq!(rules_hit(&s, &eicar()).0, ["Eicar"]);

    // It is the kept copy that is loaded: put another ruleset's in its place.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = elsewhere.path().join("o.yar");
    fs::write(&other, "rule Other { condition: true }").unwrap();
    let other_cache = elsewhere.path().join("cache");
    let o = compile_with(&other, EngineChoice::YaraX, Some(&other_cache)).unwrap();
    let other_kept = fs::read_dir(&other_cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let original = fs::read(&kept[0]).unwrap();
    fs::copy(&other_kept, &kept[0]).unwrap();
    let swapped = compile_with(&file, EngineChoice::YaraX, Some(&cache)).unwrap();
    assert_eq!((swapped.hash, swapped.rule_count), (o.hash, 1));
    // A kept copy holds native code: one that other users could have
    // written is compiled afresh instead, and so is one in such a folder.
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [(&kept[0], 0o620), (&cache, 0o757)] {
        fs::copy(&other_kept, &kept[0]).unwrap();
        let before = fs::metadata(path).unwrap().permissions().mode();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        let refused = compile_with(&file, EngineChoice::YaraX, Some(&cache)).unwrap();
        assert_eq!(refused.hash, first.hash, "{} mode {mode:o}", path.display());
        fs::set_permissions(path, fs::Permissions::from_mode(before)).unwrap();
    }
    fs::write(&kept[0], original).unwrap();

    // A damaged copy is compiled again, and replaced.
    let mut bytes = fs::read(&kept[0]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&kept[0], &bytes).unwrap();
    let mended = compile_with(&file, EngineChoice::YaraX, Some(&cache)).unwrap();
    assert_eq!(mended.hash, first.hash);
    assert_ne!(
        fs::read(&kept[0]).unwrap(),
        bytes,
        "the damaged copy is replaced"
    );

    // A whole copy YARA-X cannot read: the scans say so, the copy goes,
    // and the next compile makes it again.
    let count = 2u64.to_le_bytes();
    let junk = b"not compiled rules";
    let digest = sha2::Sha256::new()
        .chain_update(count)
        .chain_update(junk)
        .finalize();
    fs::write(&kept[0], [&digest[..], &count, junk].concat()).unwrap();
    let unusable = compile_with(&file, EngineChoice::YaraX, Some(&cache)).unwrap();
    let s = yara_scanner(&file, unusable, EngineChoice::YaraX);
    let e = s
        .scan(&ScanInput::new(&event("x"), b"x", TIMEOUT))
        .unwrap_err();
    assert!(e.to_string().contains("unusable"), "{e}");
    assert!(!kept[0].exists());
    let again = compile_with(&file, EngineChoice::YaraX, Some(&cache)).unwrap();
    assert_eq!(again.hash, first.hash);
    assert!(kept[0].exists());

    // Other text: another copy; only the last CACHE_KEEP stay.
    for n in 0..10 {
        fs::write(&file, format!("{RULES}\nrule N{n} {{ condition: false }}")).unwrap();
        let c = compile_with(&file, EngineChoice::YaraX, Some(&cache)).unwrap();
        assert_eq!(c.rule_count, 3);
    }
    assert_eq!(fs::read_dir(&cache).unwrap().count(), 8);

    // An included file's text is part of the name.
    let other = tempfile::tempdir().unwrap();
    let (inc, top, c) = (
        other.path().join("inc.yar"),
        other.path().join("top.yar"),
        other.path().join("c"),
    );
    fs::write(&inc, "rule Inc { condition: true }").unwrap();
    fs::write(&top, "include \"inc.yar\"\nrule Top { condition: Inc }").unwrap();
    assert_eq!(
        compile_with(&top, EngineChoice::YaraX, Some(&c))
            .unwrap()
            .rule_count,
        2
    );
    fs::write(
        &inc,
        "rule Inc { condition: true }\nrule Inc2 { condition: false }",
    )
    .unwrap();
    assert_eq!(
        compile_with(&top, EngineChoice::YaraX, Some(&c))
            .unwrap()
            .rule_count,
        3
    );
    assert_eq!(fs::read_dir(&c).unwrap().count(), 2);

    // The same files reached another way: the copy kept is loaded.
    let sub = other.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let roundabout = sub.join("..").join(".").join("top.yar");
    let again = compile_with(&roundabout, EngineChoice::YaraX, Some(&c)).unwrap();
    assert_eq!(again.rule_count, 3);
    assert_eq!(fs::read_dir(&c).unwrap().count(), 2);
}
