//! The hostile-input catalogue: what an attacker (or a broken sensor, or a
//! careless operator) can hand trawl, one row each, with the outcome trawl
//! must give. Files go through `trawl scan` with every worker that reads
//! content; configs through `trawl config check`; rules through `trawl
//! rules check`; wire messages through the decoder every node uses.

use std::fs;
use std::path::Path;
use std::process::Command;

use trawl_core::{wire, BlobRef, PayloadEvent, ResultEvent, SourceInfo, SourceKind, WorkerInfo};

use crate::harness::*;

/// What must be on record for a file (or an archive member: `file!member`).
struct Expect {
    /// The result's path ends with this.
    path: &'static str,
    worker: &'static str,
    outcome: &'static str,
    /// Found in the result's message or its findings.
    text: &'static str,
}

const fn expect(
    path: &'static str,
    worker: &'static str,
    outcome: &'static str,
    text: &'static str,
) -> Expect {
    Expect {
        path,
        worker,
        outcome,
        text,
    }
}

/// Hostile files, made by `MAKE_FILES` (Python: byte-exact archives and
/// executables without committing any), and what each must come to.
const FILES: &[Expect] = &[
    expect(
        "/empty.bin",
        "hash",
        "ok",
        "e3b0c44298fc1c149afbf4c8996fb924",
    ),
    expect("/one.bin", "filetype", "ok", ""),
    // A NUL in a member's name must not blind YARA.
    expect("/nul-name.zip", "extract", "ok", "\"extracted\":1"),
    expect("eicar\0\0.com", "yara", "ok", "EICAR_Test_File"),
    expect("/bomb.zip", "extract", "ok", "max_ratio"),
    expect("/bomb.zip!small.txt", "hash", "ok", ""),
    expect("/nested.zip", "extract", "ok", "\"extracted\":1"),
    expect(
        "a.zip!a.zip!a.zip!a.zip!a.zip",
        "extract",
        "ok",
        "max_depth",
    ),
    expect("/many.zip", "extract", "ok", "max_children (1000) reached"),
    expect("/traversal.zip!../../etc/passwd", "hash", "ok", ""),
    expect("/traversal.zip!/abs/evil.sh", "hash", "ok", ""),
    expect("/truncated.zip", "extract", "error", "unreadable zip"),
    expect("/badcrc.zip", "extract", "ok", "member.txt"),
    expect(
        "/encrypted.7z",
        "extract",
        "ok",
        "no configured password opens it",
    ),
    expect("/infected.7z", "extract", "ok", "\"password\":\"infected\""),
    expect("/infected.7z!eicar.com", "yara", "ok", "EICAR_Test_File"),
    expect("/bomb.gz", "extract", "ok", "max_ratio"),
    expect("/truncated.gz", "extract", "error", "unreadable gzip"),
    expect("/links.tar", "extract", "ok", "\"extracted\":1"),
    expect("/links.tar!regular.txt", "hash", "ok", ""),
    expect("/short.tar", "extract", "ok", "short.bin"),
    expect("/sections.elf", "elf", "ok", "\"section_count\":65279"),
    expect("/short.elf", "elf", "error", "malformed ELF"),
    expect("/lfanew.exe", "pe", "error", "malformed PE"),
    expect("/garbage.7z", "extract", "error", "unreadable 7z"),
    expect("/garbage.rar", "extract", "ok", "truncated\":true"),
    expect("/garbage.cab", "extract", "error", "unreadable cab"),
    expect("/new\nline\tname.txt", "hash", "ok", ""),
    expect("/<img src=x onerror=alert(1)>.exe", "hash", "ok", ""),
    expect("/report\u{202e}txt.exe", "filetype", "ok", ""),
    expect(
        "/sparse-huge.bin",
        "ingest",
        "error",
        "over the 25000000-byte limit",
    ),
    expect("/stub.pdf", "filetype", "ok", "application/pdf"),
];

const MAKE_FILES: &str = r#"
import gzip, io, os, random, struct, subprocess, sys, tarfile, zipfile
out = sys.argv[1]
eicar = sys.stdin.buffer.read()
rng = random.Random(7)  # the same bytes every run, none of them compressible
def w(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
def zipped(members, method=zipfile.ZIP_DEFLATED):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", method) as z:
        for n, d in members:
            z.writestr(n, d)
    return b.getvalue()
w("empty.bin", b"")
w("one.bin", b"A")
# Python drops a name's NUL and what follows: write XX, then patch it.
w("nul-name.zip", zipped([("eicarXX.com", eicar)]).replace(b"eicarXX.com", b"eicar\0\0.com"))
w("bomb.zip", zipped([("small.txt", b"fine"), ("zeros.bin", bytes(20 << 20))]))
level = b"leaf"
for _ in range(8):
    level = zipped([("a.zip", level)])
w("nested.zip", level)
w("many.zip", zipped([("m%05d" % i, b"x") for i in range(1500)], zipfile.ZIP_STORED))
w("traversal.zip", zipped([("../../etc/passwd", b"root:x:0:0"), ("/abs/evil.sh", b"rm -rf /")]))
whole = zipped([("a.txt", b"a" * 5000), ("b.txt", b"b" * 5000)])
w("truncated.zip", whole[: len(whole) // 2])
good = zipped([("member.txt", b"the original contents")], zipfile.ZIP_STORED)
w("badcrc.zip", good.replace(b"the original contents", b"THE original contents"))
w("bomb.gz", gzip.compress(bytes(50 << 20)))
w("truncated.gz", gzip.compress(rng.randbytes(4000))[:2000])
b = io.BytesIO()
with tarfile.open(fileobj=b, mode="w") as t:
    def add(name, kind, data=b"", link=""):
        i = tarfile.TarInfo(name); i.type = kind; i.size = len(data); i.linkname = link
        t.addfile(i, io.BytesIO(data) if data else None)
    add("regular.txt", tarfile.REGTYPE, b"plain")
    add("sym", tarfile.SYMTYPE, link="/etc/shadow")
    add("hard", tarfile.LNKTYPE, link="regular.txt")
    add("fifo", tarfile.FIFOTYPE)
    add("dev", tarfile.CHRTYPE)
w("links.tar", b.getvalue())
h = tarfile.TarInfo("short.bin"); h.size = 1 << 20
w("short.tar", h.tobuf(format=tarfile.USTAR_FORMAT) + b"only a little")
# ELF32 whose 65279 section headers each claim the whole file.
n = 0xfeff
names_at = 52 + n * 40
names = b"\0.x\0"
size = names_at + len(names)
elf = b"\x7fELF\x01\x01\x01" + bytes(9)
elf += struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0x1000, 0, 52, 0, 52, 32, 0, 40, n, 1)
for i in range(n):
    if i == 1:
        elf += struct.pack("<10I", 0, 3, 0, 0, names_at, len(names), 0, 0, 1, 0)
    else:
        elf += struct.pack("<10I", 1, 1, 0, 0, 0, size, 0, 0, 1, 0)
w("sections.elf", elf + names)
w("short.elf", b"\x7fELF\x02\x01\x01" + bytes(13))
w("lfanew.exe", b"MZ" + bytes(58) + struct.pack("<I", 0x7ffffff0))
noise = rng.randbytes(3000)
w("garbage.7z", b"7z\xbc\xaf\x27\x1c" + noise)
w("garbage.rar", b"Rar!\x1a\x07\x01\x00" + noise)
w("garbage.cab", b"MSCF\0\0\0\0" + noise)
w("new\nline\tname.txt", b"a name with a newline")
w("<img src=x onerror=alert(1)>.exe", b"a name that is markup")
w("report\u202etxt.exe", b"a name that reads backwards")
with open(os.path.join(out, "sparse-huge.bin"), "wb") as f:
    f.truncate(30_000_000)
w("stub.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n")
w("secret.txt", b"the password protects this")
subprocess.run(["7zz", "a", "-bd", "-pSECRET", "-mhe=off", os.path.join(out, "encrypted.7z"), os.path.join(out, "secret.txt")],
               check=True, stdout=subprocess.DEVNULL)
os.remove(os.path.join(out, "secret.txt"))
# The password malware is shared with, on the names too: opened with trawl's default.
w("eicar.com", eicar)
subprocess.run(["7zz", "a", "-bd", "-pinfected", "-mhe=on", os.path.join(out, "infected.7z"), os.path.join(out, "eicar.com")],
               check=True, stdout=subprocess.DEVNULL)
os.remove(os.path.join(out, "eicar.com"))
"#;

fn make_files(dir: &Path) {
    let mut child = Command::new("python3")
        .args(["-c", MAKE_FILES])
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&eicar()).unwrap();
    assert!(child.wait().unwrap().success(), "making the hostile files");
}

#[test]
fn hostile_files_names_and_archives_each_get_their_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    make_files(&data);
    let rules = dir.path().join("rules.yar");
    fs::write(
        &rules,
        "rule EICAR_Test_File { strings: $a = \"EICAR-STANDARD-ANTIVIRUS-TEST-FILE\" condition: $a }\n",
    )
    .unwrap();
    let out = run(trawl()
        .current_dir(dir.path())
        .args(["scan", "data", "--db", "out.db", "--max-size", "25000000"])
        .args(["--timeout", "20s", "--rules"])
        .arg(&rules)
        .args(["--workers", "hash,filetype,yara,pe,elf,extract"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let rows = rows(&dir.path().join("out.db"));
    let mut failed = Vec::new();
    for e in FILES {
        let found = rows.iter().any(|r| {
            let path = r.path.as_deref().unwrap_or("");
            let said = format!(
                "{} {}",
                r.message.as_deref().unwrap_or(""),
                serde_json::to_string(&r.data).unwrap()
            );
            path.ends_with(e.path)
                && r.worker == e.worker
                && r.outcome == e.outcome
                && said.contains(&e.text.replace('\0', "\\u0000"))
        });
        if !found {
            let seen: Vec<String> = rows
                .iter()
                .filter(|r| r.path.as_deref().unwrap_or("").ends_with(e.path))
                .map(|r| format!("{} {} {:?} {}", r.worker, r.outcome, r.message, r.data))
                .collect();
            failed.push(format!(
                "{:?} {} {}: {seen:#?}",
                e.path, e.worker, e.outcome
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // Nothing unpacked was ever written to disk under its archive name.
    assert!(!dir.path().join("etc/passwd").exists());
    assert!(!Path::new("/abs/evil.sh").exists());
}

/// Config files an operator (or a template gone wrong) may produce, and the
/// words the one-line error must contain.
const CONFIGS: &[(&str, &str)] = &[
    ("version = 1\n[node]\nnmae = 'x'\n", "nmae"),
    ("version = 1\n[workers.a]\ntype = 'no-such'\n", "no-such"),
    ("version = 1\n[workers.a]\ntype = 'hash'\nconcurrency = 0\n", "concurrency"),
    ("version = 1\n[workers.a]\ntype = 'hash'\ntimeout = 'forever'\n", "timeout"),
    (
        "version = 1\n[workers.a]\ntype = 'yara'\nrules = 'r'\nfilter = { yara = { worker = 'b' } }\n\
         [workers.b]\ntype = 'yara'\nrules = 'r'\nfilter = { yara = { worker = 'a' } }\n",
        "a waits for b waits for a",
    ),
    (
        "version = 1\n[transport]\ntype = 'jetstream'\nservers = ['nats://127.0.0.1:1']\nprefix = 'a.b'\n",
        "prefix",
    ),
    (
        "version = 1\n[transport]\ntype = 'jetstream'\nservers = ['nats://127.0.0.1:1']\nmax_age = '1h'\nduplicate_window = '2h'\n",
        "duplicate_window",
    ),
    (
        "version = 1\n[transport]\ntype = 'jetstream'\nservers = ['nats://127.0.0.1:1']\npassword = 's3cr3t${X'\nuser = 'u'\n",
        "unterminated",
    ),
    ("version = 99\n", "version"),
    ("this is not toml = = =\n", "TOML parse error at line 1"),
];

#[test]
fn hostile_configs_are_one_line_errors_that_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, words)) in CONFIGS.iter().enumerate() {
        let cfg = dir.path().join(format!("c{i}.toml"));
        fs::write(&cfg, text).unwrap();
        let out = run(trawl().args(["config", "check"]).arg(&cfg));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{text}\n{err}");
        assert!(err.contains(words), "{text}\n{err}");
        assert!(!err.contains("s3cr3t"), "a secret was echoed: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Rule files that do not compile, and what `rules check` must say.
const RULES: &[(&str, &str)] = &[
    ("rule broken { condition: }\n", "bad.yar:1"),
    (
        "include \"/no/such/file.yar\"\nrule a { condition: true }\n",
        "bad.yar",
    ),
    (
        "rule a { strings: $x = { 4D 5A ?? } condition: $x and pe.is_dll() }\n",
        "bad.yar",
    ),
];

#[test]
fn hostile_rule_files_are_errors_with_file_and_line() {
    for (text, words) in RULES {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("bad.yar"), text).unwrap();
        let out = run(trawl().args(["rules", "check"]).arg(dir.path()));
        let err = format!("{}{}", stdout(&out), stderr(&out));
        assert_ne!(out.status.code(), Some(0), "{text}\n{err}");
        assert!(err.contains(words), "{text}\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

fn payload() -> PayloadEvent {
    PayloadEvent::new_root(
        trawl_core::sha256_hex(b"x"),
        1,
        BlobRef::Inline(b"x".to_vec()),
        SourceInfo {
            kind: SourceKind::Dir,
            sensor: "s".into(),
            path: None,
        },
    )
}

/// Messages anyone who can publish on the server may send, each refused by
/// the decoder every node runs before it acts on an event.
#[test]
fn hostile_wire_messages_are_refused_before_anything_acts_on_them() {
    let with = |f: fn(&mut PayloadEvent)| {
        let mut p = payload();
        f(&mut p);
        wire::encode(&p).unwrap()
    };
    let result = |f: fn(&mut ResultEvent)| {
        let p = payload();
        let mut r = ResultEvent::new(
            p.summary(),
            WorkerInfo::new("hash", "1"),
            trawl_core::Outcome::ok(),
            serde_json::Value::Null,
            p.ingested_at,
            "n",
        );
        f(&mut r);
        wire::encode(&r).unwrap()
    };
    let payloads: Vec<(Vec<u8>, &str)> = vec![
        (with(|p| p.id = "../../tmp/x".into()), "id"),
        (with(|p| p.id = format!("{}.1\n-o", p.id)), "id"),
        (
            with(|p| p.lineage.root_id = String::new()),
            "lineage.root_id",
        ),
        (with(|p| p.size = 1 << 50), "size"),
        (with(|p| p.blob = BlobRef::Inline(vec![0; 10])), "blob"),
        (
            with(|p| p.blob = BlobRef::Store("../../blob".into())),
            "blob",
        ),
        (with(|p| p.sha256 = "not hex".into()), "sha256"),
        (with(|p| p.source.sensor = "a\r\nb".into()), "source.sensor"),
        (b"\xc1\xff garbage".to_vec(), "cannot decode"),
        (Vec::new(), "cannot decode"),
    ];
    for (bytes, field) in &payloads {
        let e = wire::decode::<PayloadEvent>(bytes).unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    let results: Vec<(Vec<u8>, &str)> = vec![
        (result(|r| r.id = "x".into()), "id"),
        (
            result(|r| r.worker.name = "hash\r\nX: y".into()),
            "worker.name",
        ),
        (result(|r| r.replay_id = Some("../r".into())), "replay_id"),
        (result(|r| r.payload.id = "/etc".into()), "payload.id"),
    ];
    for (bytes, field) in &results {
        let e = wire::decode::<ResultEvent>(bytes).unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
}

/// Hostile lines in the logs a sensor writes, through a running node: each
/// is skipped with a warning or kept as data, and every line after it is read.
#[test]
fn hostile_sensor_log_lines_are_skipped_or_kept_as_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = d.join("suricata/filestore");
    let extract = d.join("zeek/extract_files");
    fs::create_dir_all(&store).unwrap();
    fs::create_dir_all(&extract).unwrap();
    let carve = |data: &[u8]| {
        let sha = trawl_core::sha256_hex(data);
        fs::create_dir_all(store.join(&sha[..2])).unwrap();
        fs::write(store.join(&sha[..2]).join(&sha), data).unwrap();
        sha
    };
    let (a, b, c) = (
        carve(&eicar()),
        carve(b"second carved"),
        carve(b"third carved"),
    );
    let never = trawl_core::sha256_hex(b"never written to the filestore");
    let fileinfo = |sha: &str, extra: serde_json::Value| {
        let mut v = serde_json::json!({
            "event_type": "fileinfo", "src_ip": "10.0.0.1", "dest_ip": "10.0.0.2", "proto": "TCP",
            "fileinfo": {"filename": "f", "sha256": sha, "stored": true, "state": "CLOSED"},
        });
        for (k, x) in extra.as_object().unwrap() {
            v["fileinfo"][k] = x.clone();
        }
        v.to_string()
    };
    let mut bad_ip =
        serde_json::from_str::<serde_json::Value>(&fileinfo(&b, serde_json::json!({}))).unwrap();
    bad_ip["src_ip"] = "not-an-ip".into();
    bad_ip["http"] = serde_json::json!({"hostname": "evil\r\nX-Forged: 1"});
    let eve = [
        "{\"event_type\":\"fileinfo\", truncated garbage".to_owned(),
        fileinfo("../../../../etc/passwd", serde_json::json!({})),
        fileinfo(&a, serde_json::json!({"filename": "dropper\u{0}.exe"})),
        "{\"event_type\":\"fileinfo\",\"fileinfo\":[]}".to_owned(),
        bad_ip.to_string(),
        fileinfo(&never, serde_json::json!({"filename": "vanished.bin"})),
        fileinfo(&c, serde_json::json!({"filename": "after-all-that.txt"})),
    ];
    fs::write(d.join("suricata/eve.json"), eve.join("\n") + "\n").unwrap();
    fs::write(extract.join("extract-1-HTTP-FD"), eicar()).unwrap();
    fs::write(extract.join("extract-2-HTTP-FE"), b"fifth carved").unwrap();
    let files_log = [
        "\u{0}\u{1} not json and no TSV header".to_owned(),
        serde_json::json!({"fuid": "F1", "extracted": "../../etc/hostname"}).to_string(),
        serde_json::json!({"fuid": "F2", "extracted": "/etc/hostname"}).to_string(),
        serde_json::json!({"fuid": "FD", "filename": "inv\u{0}oice.com", "extracted": "extract-1-HTTP-FD",
            "id.orig_h": "10.1.1.1", "seen_bytes": 68}).to_string(),
        serde_json::json!({"fuid": ["not", "a", "string"], "uid": 7, "extracted": "extract-2-HTTP-FE",
            "id.orig_p": "not a port"}).to_string(),
    ];
    fs::write(d.join("zeek/files.log"), files_log.join("\n") + "\n").unwrap();
    let rules = d.join("eicar.yar");
    fs::write(
        &rules,
        "rule EICAR_Test_File { strings: $a = \"EICAR-STANDARD-ANTIVIRUS-TEST-FILE\" condition: $a }\n",
    )
    .unwrap();
    let cfg = d.join("node.toml");
    fs::write(
        &cfg,
        format!(
            "version = 1\n[node]\nname = \"n\"\ndata_dir = \"state\"\n[transport]\ntype = \"memory\"\n\
             [sources.suricata]\ntype = \"suricata\"\npath = \"suricata/filestore\"\neve = \"suricata/eve.json\"\npoll_interval = \"100ms\"\n\
             [sources.zeek]\ntype = \"zeek\"\npath = \"zeek/extract_files\"\nfiles_log = \"zeek/files.log\"\npoll_interval = \"100ms\"\n\
             [workers.hash]\ntype = \"hash\"\n[workers.yara]\ntype = \"yara\"\nrules = {rules:?}\n\
             [connectors.db]\ntype = \"sqlite\"\npath = \"results.db\"\nflush_interval = \"100ms\"\n"
        ),
    )
    .unwrap();
    let node = start_node(&cfg);
    let db = d.join("results.db");
    // a, b, c and the zeek pair by hash and yara; the vanished file's record.
    wait_for(
        "every readable line's file",
        std::time::Duration::from_secs(60),
        || rows(&db).len() >= 11,
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = node.terminate();
    let log = String::from_utf8_lossy(&out.stderr);
    let rows = rows(&db);
    assert_eq!(rows.len(), 11, "{rows:#?}");
    let named = |name: &str, worker: &str| {
        rows.iter()
            .find(|r| r.filename.as_deref() == Some(name) && r.worker == worker)
            .unwrap_or_else(|| panic!("{name} {worker}: {rows:#?}"))
    };
    // A NUL in a name from eve.json or files.log: kept, and YARA not blinded.
    for name in ["dropper\0.exe", "inv\0oice.com"] {
        assert_eq!(
            named(name, "yara").data["matches"][0]["rule"],
            "EICAR_Test_File"
        );
    }
    assert_eq!(named("after-all-that.txt", "hash").outcome, "ok");
    let vanished = named("vanished.bin", "ingest");
    assert_eq!(vanished.outcome, "error");
    assert!(rows.iter().all(|r| {
        let p = r.path.as_deref().unwrap_or("");
        !p.ends_with("etc/passwd") && !p.ends_with("etc/hostname")
    }));
    for warning in [
        "malformed eve.json line skipped",
        "files.log names a file outside the extract folder",
        "malformed files.log line skipped",
    ] {
        assert!(log.contains(warning), "{warning}: {log}");
    }
}
