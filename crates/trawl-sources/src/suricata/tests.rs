use super::*;
use crate::test_support::{append, component, Bench};
use std::fs;
use std::io::Write;
use trawl_core::PayloadEvent;

fn fixture(sample: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/suricata")
        .join(sample)
}

/// The data files of a real sample, as stand-ins of the listed sizes.
fn data_files(sample: &str) -> Vec<(String, u64)> {
    fs::read_to_string(fixture(sample).join("filestore-listing.txt"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (_, size, path) = (parts.next()?, parts.next()?, parts.next()?);
            let name = path.rsplit('/').next()?;
            is_sha256(name).then(|| (name.to_owned(), size.parse().unwrap()))
        })
        .collect()
}

fn write_data(filestore: &Path, sha: &str, size: u64) {
    let dir = filestore.join(&sha[..2]);
    fs::create_dir_all(&dir).unwrap();
    let bytes: Vec<u8> = sha.bytes().cycle().take(size as usize).collect();
    fs::write(dir.join(sha), bytes).unwrap();
}

/// A file-store laid out as Suricata leaves it: data files, sidecars, `tmp/`.
fn lay_out(sample: &str, dest: &Path, sidecars: bool) {
    fs::create_dir_all(dest.join("tmp")).unwrap();
    fs::write(dest.join("tmp/file.99"), b"still being written").unwrap();
    for (sha, size) in data_files(sample) {
        write_data(dest, &sha, size);
    }
    if sidecars {
        for entry in walkdir::WalkDir::new(fixture(sample).join("filestore")) {
            let entry = entry.unwrap();
            if entry.file_type().is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(fixture(sample).join("filestore"))
                    .unwrap();
                fs::copy(entry.path(), dest.join(rel)).unwrap();
            }
        }
    }
}

fn suricata(dir: &Path, extra: &str) -> Component {
    component(
        "suricata",
        dir,
        &format!("metadata_wait = '300ms'\n{extra}"),
    )
}

/// Stand-in bytes do not hash to the name, so go by the data file's name.
fn stored_as(e: &PayloadEvent) -> &str {
    e.source
        .path
        .as_deref()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
}

fn by_sha(events: &[PayloadEvent], prefix: &str) -> usize {
    events
        .iter()
        .filter(|e| stored_as(e).starts_with(prefix))
        .count()
}

#[tokio::test]
async fn every_sidecar_is_one_payload_with_the_sensors_metadata() {
    let fs_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    lay_out("filestore-filecontainer-smb", fs_dir.path(), true);
    let b = Bench::new().await;
    let src = SuricataFactory
        .build(&suricata(fs_dir.path(), ""), data.path())
        .unwrap();
    let run = b.start(src.clone());
    // 37 sidecars for 8 distinct files: repeats are payloads of their own.
    let events = b.events(37).await;
    b.nothing_more().await;
    run.stop().await;
    assert_eq!(by_sha(&events, "4d1c83f5"), 7);
    assert_eq!(by_sha(&events, "1dc15d9d"), 4);
    let ids: HashSet<_> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 37, "each occurrence has its own payload id");

    let mame = events
        .iter()
        .find(|e| e.meta.filename.as_deref() == Some("\\MAME.EXE"))
        .expect("SMB filename from the sidecar");
    let flow = mame.meta.flow.as_ref().unwrap();
    assert_eq!(flow.src_ip.as_deref(), Some("192.168.24.100"));
    assert_eq!(flow.src_port, Some(445));
    assert_eq!(flow.proto.as_deref(), Some("TCP"));
    assert_eq!(flow.app_proto.as_deref(), Some("smb"));
    assert_eq!(mame.meta.fields["smb"]["share"], r"\192.168.24.100\C$");
    assert_eq!(mame.meta.fields["vlan"], serde_json::json!([120]));
    assert_eq!(mame.meta.fields["fileinfo"]["state"], "CLOSED");
    assert_eq!(mame.meta.hashes["md5"], "680efc59672d8a662909865aa644e765");
    assert_eq!(mame.source.kind, SourceKind::Suricata);
    assert!(stored_as(mame).starts_with("1dc15d9d"));

    // A restart publishes nothing again.
    let run = b.start(src);
    b.nothing_more().await;
    run.stop().await;
}

#[tokio::test]
async fn eve_fileinfo_events_are_followed_as_suricata_writes_them() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let filestore = root.path().join("filestore");
    fs::create_dir_all(filestore.join("tmp")).unwrap();
    let eve = root.path().join("eve.json");
    let mut lines: Vec<String> =
        fs::read_to_string(fixture("filestore-filecontainer-http").join("eve-fileinfo.json"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
    let sizes: HashMap<String, u64> = data_files("filestore-filecontainer-http")
        .into_iter()
        .collect();
    let b = Bench::new().await;
    let c = suricata(&filestore, &format!("eve = '{}'\n", eve.display()));
    let src = SuricataFactory.build(&c, data.path()).unwrap();
    let append = |text: &str| append(&eve, text);
    let sha_of = |line: &str| -> String {
        let v: Value = serde_json::from_str(line).unwrap();
        v["fileinfo"]["sha256"].as_str().unwrap().to_owned()
    };

    let run = b.start(src.clone());
    // Other event types, a file Suricata did not store, and garbage are passed over.
    append("{\"event_type\":\"alert\",\"src_ip\":\"10.0.0.1\"}\n");
    append(
        &lines[0]
            .replace("\"stored\":true", "\"stored\":false")
            .replace("\"file_id\":1,", ""),
    );
    append("\n{\"event_type\":\"fileinfo\", truncated garbage\n");
    let first: Vec<String> = lines.drain(..6).collect();
    for line in &first {
        let sha = sha_of(line);
        write_data(&filestore, &sha, sizes[&sha]);
        append(&format!("{line}\n"));
    }
    let events = b.events(6).await;
    assert!(events
        .iter()
        .all(|e| e.meta.fields["http"]["hostname"] == "192.168.28.253"));
    assert!(events
        .iter()
        .any(|e| e.meta.filename.as_deref() == Some("/en-US/static/@95063/css/print.css")));
    b.nothing_more().await;
    run.stop().await;

    // Written while trawl was down, then after it is back: each line once.
    let (down, up) = lines.split_at(2);
    for line in down {
        let sha = sha_of(line);
        write_data(&filestore, &sha, sizes[&sha]);
        append(&format!("{line}\n"));
    }
    let run = b.start(src);
    for line in up {
        let sha = sha_of(line);
        write_data(&filestore, &sha, sizes[&sha]);
        append(&format!("{line}\n"));
    }
    let events = b.events(5).await;
    assert_eq!(events.len(), 5);
    b.nothing_more().await;
    run.stop().await;
}

#[tokio::test]
async fn a_data_file_without_metadata_is_published_after_the_wait() {
    let fs_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    lay_out("truncated", fs_dir.path(), false);
    let b = Bench::new().await;
    let src = SuricataFactory
        .build(&suricata(fs_dir.path(), ""), data.path())
        .unwrap();
    let run = b.start(src);
    let events = b.events(1).await;
    assert!(events[0].meta.flow.is_none());
    assert_eq!(events[0].size, 4096);
    assert!(events[0].sha256.len() == 64, "the bytes' own hash");
    b.nothing_more().await;
    run.stop().await;
}

#[tokio::test]
async fn truncated_files_carry_their_state_and_sensor_names_stay_data() {
    let fs_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    lay_out("truncated", fs_dir.path(), true);
    // A hostile filename: path separators and bytes that are not UTF-8 text.
    let sha = "ab".repeat(32);
    write_data(fs_dir.path(), &sha, 10);
    let side = format!(
        r#"{{"src_ip":"10.1.1.1","fileinfo":{{"filename":"../../etc/passwd\u0000\u00ff","state":"CLOSED","stored":true,"sha256":"{sha}"}}}}"#
    );
    fs::write(fs_dir.path().join(format!("ab/{sha}.1.1.json")), side).unwrap();
    let b = Bench::new().await;
    let c = suricata(fs_dir.path(), "after = 'delete'\n");
    let run = b.start(SuricataFactory.build(&c, data.path()).unwrap());
    let events = b.events(2).await;
    let truncated = events
        .iter()
        .find(|e| stored_as(e).starts_with("9ef75134"))
        .unwrap();
    assert_eq!(truncated.meta.fields["fileinfo"]["state"], "TRUNCATED");
    assert!(
        !truncated.meta.hashes.contains_key("md5"),
        "no md5 for truncated files"
    );
    let hostile = events
        .iter()
        .find(|e| e.meta.flow.as_ref().and_then(|f| f.src_ip.as_deref()) == Some("10.1.1.1"))
        .unwrap();
    assert!(hostile
        .meta
        .filename
        .as_deref()
        .unwrap()
        .starts_with("../../etc/passwd"));
    assert_eq!(
        hostile.source.path.as_deref(),
        fs_dir.path().join(format!("ab/{sha}")).to_str()
    );
    run.stop().await;
    // `after = delete` removed data files and sidecars, and nothing else.
    assert!(!fs_dir.path().join(format!("ab/{sha}")).exists());
    assert!(!fs_dir.path().join(format!("ab/{sha}.1.1.json")).exists());
    assert!(
        fs_dir.path().join("tmp/file.99").exists(),
        "tmp/ is never touched"
    );
}

const V1_META: &str = "TIME:              08/31/2017-17:50:53.452017
PCAP PKT NUM:      8
SRC IP:            10.0.10.192
DST IP:            10.0.3.3
PROTO:             6
SRC PORT:          80
DST PORT:          34098
APP PROTO:         http
HTTP URI:          /putty.exe
HTTP HOST:         10.0.10.192
HTTP REFERER:      <unknown>
HTTP USER AGENT:   Wget/1.17.1 (linux-gnu)
FILENAME:          /putty.exe
MAGIC:             PE32+ executable (GUI) x86-64, for MS Windows
STATE:             CLOSED
MD5:               54cb91395cdaad9d47882533c21fc0e9
SHA1:              3b1333f826e5fe36395042fe0f1b895f4a373f1b
SIZE:              854072
";

#[tokio::test]
async fn file_store_v1_files_wait_for_their_complete_meta() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("file.1"), b"MZ stand-in").unwrap();
    fs::write(dir.path().join("file.1.meta"), V1_META).unwrap();
    fs::write(dir.path().join("file.2.tmp"), b"being written").unwrap();
    fs::write(dir.path().join("file.2.meta.tmp"), "TIME: x\n").unwrap();
    // Up to Suricata 4.0 the meta is written in place; no SIZE yet = not done.
    let (head, tail) = V1_META.split_at(V1_META.find("FILENAME").unwrap());
    fs::write(dir.path().join("file.3"), b"third").unwrap();
    fs::write(dir.path().join("file.3.meta"), head).unwrap();
    let b = Bench::new().await;
    let c = component(
        "suricata",
        dir.path(),
        "filestore = 'v1'\nmetadata_wait = '1h'\n",
    );
    let run = b.start(SuricataFactory.build(&c, data.path()).unwrap());
    let e = &b.events(1).await[0];
    assert_eq!(e.meta.filename.as_deref(), Some("/putty.exe"));
    let flow = e.meta.flow.as_ref().unwrap();
    assert_eq!(
        (flow.src_ip.as_deref(), flow.src_port, flow.proto.as_deref()),
        (Some("10.0.10.192"), Some(80), Some("TCP"))
    );
    assert_eq!(e.meta.fields["http"]["hostname"], "10.0.10.192");
    assert_eq!(
        e.meta.fields["http"]["http_user_agent"],
        "Wget/1.17.1 (linux-gnu)"
    );
    assert!(
        e.meta.fields["http"].get("http_refer").is_none(),
        "<unknown> is not a value"
    );
    assert_eq!(e.meta.hashes["md5"], "54cb91395cdaad9d47882533c21fc0e9");
    b.nothing_more().await;
    fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("file.3.meta"))
        .unwrap()
        .write_all(tail.as_bytes())
        .unwrap();
    assert_eq!(b.events(1).await[0].size, 5);
    b.nothing_more().await;
    run.stop().await;
}

#[test]
fn config_checks_name_the_key() {
    let d = tempfile::tempdir().unwrap();
    let check = |extra: &str| {
        SuricataFactory
            .check(&component("suricata", d.path(), extra))
            .unwrap_err()
            .to_string()
    };
    assert!(check("filestore = 'v3'\n").contains("filestore: expected"));
    assert!(
        check("filestore = 'v1'\neve = 'eve.json'\n").contains("eve: only with filestore = \"v2\"")
    );
    assert!(check("files_log = 'files.log'\n").contains("unknown field `files_log`"));
    assert!(check("settle = '1s'\n").contains("unknown field `settle`"));
    assert!(check("metadata_wait = '0s'\n").contains("metadata_wait: invalid duration"));
}

#[tokio::test]
async fn bad_sensor_output_is_skipped_or_recorded_never_fatal() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let filestore = root.path().join("filestore");
    let eve = root.path().join("eve.json");
    fs::create_dir_all(&filestore).unwrap();
    let b = Bench::new().await;
    let c = suricata(&filestore, &format!("eve = '{}'\n", eve.display()));
    let run = b.start(SuricataFactory.build(&c, data.path()).unwrap());
    // An event for a file that was pruned before trawl could read it.
    let gone = "cd".repeat(32);
    append(
        &eve,
        &format!(
            r#"{{"event_type":"fileinfo","src_ip":"10.9.9.9","fileinfo":{{"filename":"pruned.exe","stored":true,"sha256":"{gone}"}}}}"#
        ),
    );
    append(&eve, "\n");
    let r = b.result().await;
    assert_eq!(r.worker.name, crate::INGEST_WORKER);
    assert_eq!(r.payload.filename.as_deref(), Some("pruned.exe"));
    assert_eq!(
        r.payload.flow.as_ref().unwrap().src_ip.as_deref(),
        Some("10.9.9.9")
    );
    assert_eq!(
        r.payload.sha256, gone,
        "the sensor's hash names the lost file"
    );
    assert!(r.outcome.message.unwrap().contains("disappeared"));
    run.stop().await;

    // Without eve: a sidecar that is not JSON still lets its file through.
    let fs2 = tempfile::tempdir().unwrap();
    let sha = "ef".repeat(32);
    write_data(fs2.path(), &sha, 7);
    fs::write(
        fs2.path().join(format!("ef/{sha}.5.5.json")),
        b"{\"fileinfo\": [",
    )
    .unwrap();
    let run = b.start(
        SuricataFactory
            .build(
                &suricata(fs2.path(), ""),
                tempfile::tempdir().unwrap().path(),
            )
            .unwrap(),
    );
    let e = &b.events(1).await[0];
    assert_eq!(e.size, 7);
    assert!(e.meta.flow.is_none());
    b.nothing_more().await;
    run.stop().await;
}

proptest::proptest! {
    #[test]
    fn any_eve_record_or_sidecar_becomes_metadata_without_panicking(
        record in crate::test_support::json_value()
    ) {
        let map = match record {
            serde_json::Value::Object(m) => m,
            other => [("fileinfo".to_owned(), other)].into_iter().collect(),
        };
        let _ = fileinfo_meta(&map);
    }

    #[test]
    fn any_v1_meta_text_parses_without_panicking(text in proptest::prelude::any::<String>()) {
        let _ = v1_meta(&text);
    }
}
