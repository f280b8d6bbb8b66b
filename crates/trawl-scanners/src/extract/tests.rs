use super::*;
use std::io::Write;
use trawl_core::{BlobRef, PayloadEvent, SourceInfo, SourceKind};
use zip::write::SimpleFileOptions;

pub(super) fn extractor(extra: &str) -> Extractor {
    let c = trawl_config::parse(
        std::path::Path::new("n.toml"),
        &format!("version = 1\n[workers.extract]\ntype = 'extract'\n{extra}\n"),
    )
    .unwrap();
    Extractor {
        info: WorkerInfo::new("extract", "1"),
        limits: c.workers["extract"].component.params().unwrap(),
    }
}

fn event(name: &str, depth: u32) -> PayloadEvent {
    let mut e = PayloadEvent::new_root(
        "00".into(),
        0,
        BlobRef::Inline(Vec::new()),
        SourceInfo {
            kind: SourceKind::Dir,
            sensor: "s".into(),
            path: None,
        },
    );
    e.meta.filename = Some(name.into());
    e.lineage.depth = depth;
    e
}

pub(super) const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) fn run(
    x: &Extractor,
    name: &str,
    depth: u32,
    data: &[u8],
) -> Result<ScanOutput, ScanError> {
    x.scan(&ScanInput::new(&event(name, depth), data, TIMEOUT))
}

/// A zip of `(name, bytes)` members, deflated, optionally AES-encrypted.
pub(crate) fn zip_of(members: &[(&str, &[u8])], password: Option<&str>) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in members {
        let mut opts =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        if let Some(pw) = password {
            opts = opts.with_aes_encryption(zip::AesMode::Aes256, pw);
        }
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn members_become_children_and_their_names_stay_data() {
    let z = zip_of(
        &[
            ("a.txt", b"alpha"),
            ("../../etc/passwd", b"root:x"),
            ("/abs/evil.exe", b"MZ"),
        ],
        None,
    );
    let out = run(&extractor(""), "x.zip", 0, &z).unwrap();
    let names: Vec<&str> = out.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a.txt", "../../etc/passwd", "/abs/evil.exe"]);
    assert_eq!(out.children[1].data, b"root:x");
    assert_eq!(out.data["archive"], "zip");
    assert_eq!(out.data["extracted"], 3);
    assert_eq!(out.data["truncated"], false);
}

#[test]
fn an_archive_past_its_deadline_keeps_what_was_unpacked_and_says_so() {
    let z = zip_of(&[("a.txt", b"alpha"), ("b.txt", b"beta")], None);
    let e = event("slow.zip", 0);
    let out = extractor("")
        .scan(&ScanInput::new(&e, &z, std::time::Duration::ZERO))
        .unwrap();
    assert!(out.children.is_empty());
    assert_eq!(out.data["truncated"], true);
    let why = out.data["truncated_reason"].as_str().unwrap();
    assert!(why.starts_with("timeout"), "{why}");
}

#[test]
fn a_zip_bomb_stops_at_the_ratio() {
    let zeros = vec![0u8; 20 * 1024 * 1024];
    let z = zip_of(&[("small.txt", b"fine"), ("zeros.bin", &zeros)], None);
    assert!(z.len() < 100_000, "highly compressible: {}", z.len());
    let out = run(&extractor(""), "bomb.zip", 0, &z).unwrap();
    assert_eq!(out.children.len(), 1, "only the member within limits");
    assert_eq!(out.data["truncated"], true);
    let why = out.data["truncated_reason"].as_str().unwrap();
    assert!(
        why.contains("zeros.bin") && why.contains("max_ratio"),
        "{why}"
    );
}

#[test]
fn nested_archives_stop_at_max_depth() {
    // 42.zip in miniature: each level holds copies of the level below.
    let mut level = b"leaf".to_vec();
    for _ in 0..6 {
        let copy = level.clone();
        level = zip_of(&[("a.zip", &copy), ("b.zip", &copy)], None);
    }
    let x = extractor("max_depth = 3");
    let top = run(&x, "42.zip", 0, &level).unwrap();
    assert_eq!(top.children.len(), 2);
    let deep = run(&x, "a.zip", 3, &top.children[0].data).unwrap();
    assert!(deep.children.is_empty());
    assert_eq!(deep.data["truncated"], true);
    assert!(deep.data["truncated_reason"]
        .as_str()
        .unwrap()
        .contains("max_depth (3)"));
}

#[test]
fn a_hundred_thousand_entries_stop_at_max_children() {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..100_000 {
        w.start_file(format!("f{i}"), opts).unwrap();
        w.write_all(b"x").unwrap();
    }
    let z = w.finish().unwrap().into_inner();
    let out = run(&extractor(""), "many.zip", 0, &z).unwrap();
    assert_eq!(out.children.len(), 1000);
    assert_eq!(out.data["entries"], 100_000);
    assert!(out.data["truncated_reason"]
        .as_str()
        .unwrap()
        .contains("max_children (1000)"));
}

/// Unpack `data` and everything nested in it the way the pipeline does: each
/// member becomes a child event (carrying its budget) that is unpacked in turn.
fn unpack_tree(x: &Extractor, event: &PayloadEvent, data: &[u8], seen: &mut Vec<Value>) -> u64 {
    let out = x.scan(&ScanInput::new(event, data, TIMEOUT)).unwrap();
    seen.push(out.data);
    let mut descendants = out.children.len() as u64;
    for (i, c) in out.children.iter().enumerate() {
        let child = event.child(i, c, "extract");
        descendants += unpack_tree(x, &child, &c.data, seen);
    }
    descendants
}

#[test]
fn children_and_bytes_are_limited_per_tree_not_per_archive() {
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("f{i}.txt"), vec![b'a' + i as u8; 100]))
        .collect();
    let members: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let inner = zip_of(&members, None);
    let outer = zip_of(
        &[("a.zip", &inner), ("b.zip", &inner), ("c.zip", &inner)],
        None,
    );

    // Per archive, each of these would be within limits: 3 + 3 × 8 = 27 files.
    let mut seen = Vec::new();
    let all = unpack_tree(&extractor(""), &event("o.zip", 0), &outer, &mut seen);
    assert_eq!(all, 27);

    let mut seen = Vec::new();
    let capped = unpack_tree(
        &extractor("max_children = 10"),
        &event("o.zip", 0),
        &outer,
        &mut seen,
    );
    // 3 inner archives, then the 7 left shared between them: 2 each.
    assert_eq!(capped, 3 + 3 * 2);
    let why = seen[1]["truncated_reason"].as_str().unwrap();
    assert!(
        why.contains("max_children (10) reached for the archive tree")
            && why.contains("share was 2"),
        "{why}"
    );

    // Bytes: the outer archive unpacks 3 × inner, the rest is split three ways.
    let budget = 3 * inner.len() as u64 + 3 * 250;
    let mut seen = Vec::new();
    unpack_tree(
        &extractor(&format!("max_total_bytes = {budget}")),
        &event("o.zip", 0),
        &outer,
        &mut seen,
    );
    let total: u64 = seen
        .iter()
        .map(|d| d["extracted_bytes"].as_u64().unwrap_or(0))
        .sum();
    assert!(total <= budget, "{total} > {budget}");
    assert_eq!(seen[1]["extracted"], 2, "250 bytes hold two 100-byte files");
    assert!(seen[1]["truncated_reason"]
        .as_str()
        .unwrap()
        .contains("max_total_bytes"));
}

#[test]
fn truncated_and_corrupt_archives_are_errors_not_panics() {
    let z = zip_of(&[("a.txt", &[7u8; 5000])], None);
    let e = run(&extractor(""), "cut.zip", 0, &z[..z.len() / 2]).unwrap_err();
    assert!(e.to_string().starts_with("unreadable zip"), "{e}");
    let e = run(&extractor(""), "cut.gz", 0, &[0x1f, 0x8b, 8, 0, 0, 0]).unwrap_err();
    assert!(e.to_string().starts_with("unreadable gzip"), "{e}");
    let out = run(&extractor(""), "plain.txt", 0, b"not an archive").unwrap();
    assert!(out.children.is_empty() && out.data["archive"].is_null());
}

#[test]
fn encrypted_members_open_with_a_configured_password_or_say_so() {
    let z = zip_of(&[("sample.exe", b"MZ sample")], Some("infected"));
    let out = run(&extractor(""), "s.zip", 0, &z).unwrap();
    assert_eq!(out.children[0].data, b"MZ sample");
    assert_eq!(out.data["password"], "infected");
    let z = zip_of(&[("sample.exe", b"MZ sample")], Some("s3cret"));
    let out = run(&extractor(""), "s.zip", 0, &z).unwrap();
    assert!(out.children.is_empty());
    assert_eq!(out.data["encrypted"], 1);
    assert!(out.data["truncated_reason"]
        .as_str()
        .unwrap()
        .contains("encrypted"));
}

#[test]
fn gzip_and_tar_unpack() {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "dir/inner.bin", &b"inner"[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let tgz = gz.finish().unwrap();

    let x = extractor("");
    let out = run(&x, "bundle.tar.gz", 0, &tgz).unwrap();
    assert_eq!(out.children[0].name, "bundle.tar");
    // The tar comes back as a payload of its own, one level down.
    let out = run(&x, "bundle.tar", 1, &out.children[0].data).unwrap();
    assert_eq!(out.data["archive"], "tar");
    assert_eq!(out.children[0].name, "dir/inner.bin");
    assert_eq!(out.children[0].data, b"inner");
}

proptest::proptest! {
    /// Listing an archive of any format never panics, whatever follows its
    /// magic bytes (7z, rar and cab included).
    #[test]
    fn any_bytes_after_an_archive_magic_are_listed_without_panicking(
        magic in proptest::sample::select(vec![
            b"PK\x03\x04".as_slice(),
            b"PK\x05\x06",
            b"\x1f\x8b\x08\x00",
            b"7z\xbc\xaf\x27\x1c",
            b"Rar!\x1a\x07\x00",
            b"Rar!\x1a\x07\x01\x00",
            b"MSCF\0\0\0\0",
        ]),
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
    ) {
        let mut data = magic.to_vec();
        data.extend_from_slice(&body);
        let _ = run(&extractor(""), "fuzz.bin", 0, &data);
    }

    #[test]
    fn any_bytes_at_tars_magic_offset_are_listed_without_panicking(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 263..4096),
    ) {
        let mut data = body;
        data[257..262].copy_from_slice(b"ustar");
        let _ = run(&extractor(""), "fuzz.tar", 0, &data);
    }
}
