//! Reading one file and publishing it, or recording why it could not be read.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::Utc;
use trawl_core::{
    BlobRef, Outcome, OutcomeStatus, PayloadEvent, PayloadSummary, ResultEvent, SourceInfo,
    SourceKind, WorkerInfo,
};
use trawl_transport::{Transport, TransportError};

/// The worker name under which unreadable files are recorded in the results.
pub const INGEST_WORKER: &str = "ingest";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The file could not be read; recorded as an error result.
    #[error("{0}")]
    Unreadable(String),
    #[error("file is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// A file read whole, with the sha256 that addresses its bytes.
#[derive(Debug)]
pub struct ReadFile {
    pub path: PathBuf,
    pub data: Bytes,
    pub sha256: String,
}

/// Read and hash one file (blocking).
pub fn read_file(path: &Path, max_size: u64) -> Result<ReadFile, IngestError> {
    let data = Bytes::from(read_limited(path, max_size)?);
    let sha256 = trawl_core::sha256_hex(&data);
    Ok(ReadFile {
        path: path.to_path_buf(),
        data,
        sha256,
    })
}

/// Publish a file read by [`read_file`] as a root payload. `ingest_key`, when
/// the source has one, lets the transport drop a republish after a restart.
pub async fn publish_file(
    transport: &dyn Transport,
    file: ReadFile,
    kind: SourceKind,
    sensor: &str,
    ingest_key: Option<String>,
) -> Result<(), TransportError> {
    let mut event = PayloadEvent::new_root(
        file.sha256.clone(),
        file.data.len() as u64,
        BlobRef::Store(file.sha256),
        SourceInfo {
            kind,
            sensor: sensor.to_owned(),
            path: Some(file.path.to_string_lossy().into_owned()),
        },
    );
    event.meta.filename = file
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    event.ingest_key = ingest_key;
    transport.publish_payload(event, file.data).await
}

/// Read `path` whole off the async threads and publish it.
pub async fn ingest_file(
    transport: &dyn Transport,
    path: &Path,
    kind: SourceKind,
    sensor: &str,
    max_size: u64,
    ingest_key: Option<String>,
) -> Result<(), IngestError> {
    let owned = path.to_path_buf();
    let file = tokio::task::spawn_blocking(move || read_file(&owned, max_size))
        .await
        .map_err(|e| IngestError::Unreadable(format!("reader stopped: {e}")))??;
    Ok(publish_file(transport, file, kind, sensor, ingest_key).await?)
}

/// Read `paths` in order on a blocking thread, up to `depth` files ahead of
/// the consumer, so reading overlaps publishing.
pub fn read_ahead(
    paths: Vec<PathBuf>,
    max_size: u64,
    depth: usize,
) -> tokio::sync::mpsc::Receiver<(PathBuf, Result<ReadFile, IngestError>)> {
    let (tx, rx) = tokio::sync::mpsc::channel(depth.max(1));
    tokio::task::spawn_blocking(move || {
        for path in paths {
            let read = read_file(&path, max_size);
            if tx.blocking_send((path, read)).is_err() {
                break;
            }
        }
    });
    rx
}

fn read_limited(path: &Path, max_size: u64) -> Result<Vec<u8>, IngestError> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| IngestError::Unreadable(io_reason(&e));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(IngestError::Unreadable("is a directory".into()));
    }
    if meta.len() > max_size {
        return Err(IngestError::TooLarge {
            size: meta.len(),
            limit: max_size,
        });
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    // Read one byte past the limit: a file that grew after the stat is caught too.
    file.take(max_size + 1)
        .read_to_end(&mut data)
        .map_err(unreadable)?;
    if data.len() as u64 > max_size {
        return Err(IngestError::TooLarge {
            size: data.len() as u64,
            limit: max_size,
        });
    }
    Ok(data)
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "file disappeared before it could be read".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// An error result for a file that never became a payload, so the failure is
/// visible in the datastore next to the files that were scanned.
pub fn ingest_error_result(
    path: &Path,
    kind: SourceKind,
    sensor: &str,
    node: &str,
    reason: &str,
) -> ResultEvent {
    let id = ulid::Ulid::generate().to_string();
    ResultEvent::new(
        PayloadSummary {
            id: id.clone(),
            sha256: String::new(),
            size: 0,
            filename: path.file_name().map(|n| n.to_string_lossy().into_owned()),
            mime: None,
            source_kind: kind,
            sensor: sensor.to_owned(),
            path: Some(path.to_string_lossy().into_owned()),
            flow: None,
            root_id: id,
            depth: 0,
        },
        WorkerInfo {
            name: INGEST_WORKER.into(),
            version: "1".into(),
            ruleset: None,
        },
        Outcome::failed(OutcomeStatus::Error, reason),
        serde_json::Value::Null,
        Utc::now(),
        node,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use trawl_transport::{MemoryParams, MemoryTransport};

    #[tokio::test]
    async fn a_file_gone_between_listing_and_reading_is_an_unreadable_error() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("brief");
        std::fs::write(&path, b"here for a moment").unwrap();
        let listed = crate::walk(&[d.path().to_path_buf()], false);
        assert_eq!(listed.files.len(), 1);
        std::fs::remove_file(&path).unwrap();
        let t = MemoryTransport::new(MemoryParams::default());
        let err = ingest_file(
            &t,
            &listed.files[0].path,
            SourceKind::Dir,
            "s",
            1 << 20,
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "file disappeared before it could be read");
    }

    #[tokio::test]
    async fn files_over_the_limit_are_not_read() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("big");
        std::fs::write(&path, vec![0u8; 2048]).unwrap();
        let t = MemoryTransport::new(MemoryParams::default());
        let err = ingest_file(&t, &path, SourceKind::Dir, "s", 1024, None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                IngestError::TooLarge {
                    size: 2048,
                    limit: 1024
                }
            ),
            "{err}"
        );
        let r = ingest_error_result(&path, SourceKind::Dir, "s", "n", &err.to_string());
        assert_eq!(r.worker.name, INGEST_WORKER);
        assert_eq!(r.outcome.status, trawl_core::OutcomeStatus::Error);
        assert_eq!(r.payload.filename.as_deref(), Some("big"));
    }
}
