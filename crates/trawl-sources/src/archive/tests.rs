use super::*;
use trawl_core::{BlobRef, SourceInfo, SourceKind};

fn event(data: &[u8], sensor: &str, at: DateTime<Utc>) -> PayloadEvent {
    let sha = trawl_core::sha256_hex(data);
    let mut e = PayloadEvent::new_root(
        sha.clone(),
        data.len() as u64,
        BlobRef::Store(sha),
        SourceInfo {
            kind: SourceKind::Dir,
            sensor: sensor.into(),
            path: None,
        },
    );
    e.ingested_at = at;
    e
}

fn config(dir: &Path) -> ArchiveConfig {
    ArchiveConfig {
        dir: dir.to_path_buf(),
        max_age: None,
        max_bytes: None,
    }
}

#[test]
fn payloads_are_kept_once_per_content_and_selected_by_time_source_and_hash() {
    let dir = tempfile::tempdir().unwrap();
    let a = Archive::open(&config(dir.path())).unwrap();
    let now = Utc::now();
    let old = now - chrono::Duration::hours(2);
    a.put(&event(b"one", "s1", old), b"one").unwrap();
    a.put(&event(b"one", "s2", now), b"one").unwrap();
    a.put(&event(b"two", "s2", now), b"two").unwrap();
    assert_eq!(
        a.usage().unwrap(),
        (3, 6),
        "the bytes of `one` are kept once"
    );
    let since = Selection {
        since: Some(now - chrono::Duration::hours(1)),
        ..Selection::default()
    };
    assert_eq!(a.events(&since).unwrap().len(), 2);
    let s1 = Selection {
        sources: vec!["s1".into()],
        ..Selection::default()
    };
    assert_eq!(a.events(&s1).unwrap()[0].ingested_at, old);
    let two = Selection {
        sha256: Some([trawl_core::sha256_hex(b"two")].into()),
        ..Selection::default()
    };
    let picked = a.events(&two).unwrap();
    assert_eq!(picked.len(), 1);
    assert_eq!(a.read(&picked[0].sha256).unwrap().unwrap(), b"two");
    // Reopened: everything is still there.
    drop(a);
    let a = Archive::open_existing(&config(dir.path())).unwrap();
    assert_eq!(a.events(&Selection::default()).unwrap().len(), 3);
}

#[test]
fn the_oldest_payloads_go_past_max_age_and_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = Archive::open(&config(dir.path())).unwrap();
    let now = Utc::now();
    for (i, hours) in [(0u8, 50i64), (1, 3), (2, 2), (3, 1)] {
        let data = vec![i; 100];
        a.put(
            &event(&data, "s", now - chrono::Duration::hours(hours)),
            &data,
        )
        .unwrap();
    }
    drop(a);
    let limited = ArchiveConfig {
        max_age: Some(Duration::from_secs(24 * 3600)),
        max_bytes: Some(250),
        ..config(dir.path())
    };
    let a = Archive::open(&limited).unwrap();
    let left: Vec<u8> = a
        .events(&Selection::default())
        .unwrap()
        .iter()
        .map(|e| a.read(&e.sha256).unwrap().unwrap()[0])
        .collect();
    assert_eq!(
        left,
        [2, 3],
        "past a day, then the oldest until under 250 bytes"
    );
    assert_eq!(a.usage().unwrap(), (2, 200));
    assert!(
        a.read(&trawl_core::sha256_hex(&[0u8; 100]))
            .unwrap()
            .is_none(),
        "bytes removed"
    );
}

#[test]
fn no_archive_is_an_error_for_replay() {
    let dir = tempfile::tempdir().unwrap();
    let e = Archive::open_existing(&config(&dir.path().join("none")))
        .err()
        .unwrap();
    assert!(e.to_string().contains("no archive here"), "{e}");
}

#[test]
fn payloads_stored_in_the_same_millisecond_are_evicted_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let a = Archive::open(&config(dir.path())).unwrap();
    let now = Utc::now();
    for i in 0..10u8 {
        let data = vec![i; 100];
        a.put(&event(&data, "s", now), &data).unwrap();
    }
    drop(a);
    let a = Archive::open(&ArchiveConfig {
        max_bytes: Some(250),
        ..config(dir.path())
    })
    .unwrap();
    assert_eq!(a.usage().unwrap(), (2, 200));
}
