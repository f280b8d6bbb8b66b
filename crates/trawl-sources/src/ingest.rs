//! Reading one file and publishing it, or recording why it could not be read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use chrono::Utc;
use trawl_core::{
    BlobRef, Outcome, OutcomeStatus, PayloadEvent, PayloadMeta, ResultEvent, SourceInfo,
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

/// Read and hash one file (blocking). With `no_symlink`, a symlink at
/// `path` (swapped in after the folder was listed) is refused, not followed.
pub fn read_file(path: &Path, max_size: u64, no_symlink: bool) -> Result<ReadFile, IngestError> {
    let data = Bytes::from(read_limited(path, max_size, no_symlink)?);
    let sha256 = trawl_core::sha256_hex(&data);
    Ok(ReadFile {
        path: path.to_path_buf(),
        data,
        sha256,
    })
}

/// Who saw a file and what they knew about it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub kind: SourceKind,
    /// The source (or node) name.
    pub sensor: String,
    /// The sensor's metadata; a missing filename is taken from the path.
    pub meta: PayloadMeta,
    /// Lets the transport drop a republish of the same file after a restart.
    pub ingest_key: Option<String>,
    /// The payload id to publish under (a source republishing what a
    /// crashed run left unhandled); else a new one.
    pub payload_id: Option<String>,
}

impl Origin {
    pub fn new(kind: SourceKind, sensor: &str) -> Self {
        Origin {
            kind,
            sensor: sensor.to_owned(),
            meta: PayloadMeta::default(),
            ingest_key: None,
            payload_id: None,
        }
    }

    /// A root payload event for a file from this origin.
    fn event(&self, sha256: String, size: u64, blob: BlobRef, path: &Path) -> PayloadEvent {
        let mut event = PayloadEvent::new_root(
            sha256,
            size,
            blob,
            SourceInfo {
                kind: self.kind,
                sensor: self.sensor.clone(),
                path: Some(path.to_string_lossy().into_owned()),
            },
        );
        if let Some(id) = &self.payload_id {
            event.id.clone_from(id);
            event.lineage.root_id.clone_from(id);
        }
        event.meta = self.meta_for(path);
        event.ingest_key = self.ingest_key.clone();
        event
    }

    fn meta_for(&self, path: &Path) -> PayloadMeta {
        let mut meta = self.meta.clone();
        if meta.filename.is_none() {
            meta.filename = path.file_name().map(|n| n.to_string_lossy().into_owned());
        }
        meta
    }
}

/// Publish a file read by [`read_file`] as a root payload.
pub async fn publish_file(
    transport: &dyn Transport,
    file: ReadFile,
    origin: &Origin,
) -> Result<(), TransportError> {
    let event = origin.event(
        file.sha256.clone(),
        file.data.len() as u64,
        BlobRef::Store(file.sha256),
        &file.path,
    );
    let bytes = file.data.len() as u64;
    transport.publish_payload(event, file.data).await?;
    metrics::counter!("trawl_source_bytes_total", "source" => origin.sensor.clone())
        .increment(bytes);
    Ok(())
}

/// Read `path` whole off the async threads and publish it; a symlink is
/// followed only with `follow_symlinks`.
pub async fn ingest_file(
    transport: &dyn Transport,
    path: &Path,
    origin: &Origin,
    max_size: u64,
    follow_symlinks: bool,
) -> Result<(), IngestError> {
    let owned = path.to_path_buf();
    let file = tokio::task::spawn_blocking(move || read_file(&owned, max_size, !follow_symlinks))
        .await
        .map_err(|e| IngestError::Unreadable(format!("reader stopped: {e}")))??;
    Ok(publish_file(transport, file, origin).await?)
}

/// Files read in order on a thread of their own, ahead of the consumer, so
/// that reading overlaps publishing: up to `depth` files, and no more once
/// `max_bytes` wait to be taken (a folder of large files must not be held
/// in memory whole, whatever the intake budget behind).
pub struct ReadAhead {
    files: tokio::sync::mpsc::UnboundedReceiver<(PathBuf, Result<ReadFile, IngestError>)>,
    held: Arc<Held>,
}

/// What the reader has read and the consumer not yet taken.
struct Held {
    waiting: Mutex<Waiting>,
    taken: Condvar,
    depth: usize,
    max_bytes: u64,
}

#[derive(Default)]
struct Waiting {
    files: usize,
    bytes: u64,
    /// The consumer is gone.
    gone: bool,
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a read adds while it waits, and takes away when taken.
    fn size(read: &Result<ReadFile, IngestError>) -> u64 {
        read.as_ref().map_or(0, |f| f.data.len() as u64)
    }

    fn full(&self, w: &Waiting) -> bool {
        w.files >= self.depth || w.bytes >= self.max_bytes
    }

    /// Whether a reader stopped at the limit goes on: once half its files
    /// are taken, so that it reads several per wake on small files, rather
    /// than one file per file taken.
    fn room(&self, w: &Waiting) -> bool {
        w.files <= self.depth / 2 && w.bytes < self.max_bytes
    }
}

impl ReadAhead {
    pub fn new(paths: Vec<PathBuf>, max_size: u64, depth: usize, max_bytes: u64) -> Self {
        let (tx, files) = tokio::sync::mpsc::unbounded_channel();
        let held = Arc::new(Held {
            waiting: Mutex::default(),
            taken: Condvar::new(),
            depth: depth.max(1),
            max_bytes,
        });
        let reader = held.clone();
        tokio::task::spawn_blocking(move || {
            for path in paths {
                let gone = reader
                    .taken
                    .wait_while(reader.lock(), |w| reader.full(w) && !w.gone)
                    .unwrap_or_else(|e| e.into_inner())
                    .gone;
                if gone {
                    break;
                }
                // Paths named or listed by the user's own choice of following.
                let read = read_file(&path, max_size, false);
                {
                    let mut w = reader.lock();
                    w.files += 1;
                    w.bytes += Held::size(&read);
                }
                if tx.send((path, read)).is_err() {
                    break;
                }
            }
        });
        ReadAhead { files, held }
    }

    /// The next file read, in the order given.
    pub async fn next(&mut self) -> Option<(PathBuf, Result<ReadFile, IngestError>)> {
        let next = self.files.recv().await?;
        let mut w = self.held.lock();
        let had_room = self.held.room(&w);
        w.files -= 1;
        w.bytes -= Held::size(&next.1);
        if !had_room && self.held.room(&w) {
            self.held.taken.notify_one();
        }
        Some(next)
    }

    /// Bytes read and not yet taken.
    pub fn held(&self) -> u64 {
        self.held.lock().bytes
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.held.lock().gone = true;
        self.held.taken.notify_one();
    }
}

fn read_limited(path: &Path, max_size: u64, no_symlink: bool) -> Result<Vec<u8>, IngestError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let unreadable = |e: std::io::Error| IngestError::Unreadable(io_reason(&e));
    // Non-blocking, so a FIFO put where a file was listed cannot hang the
    // reader on open; what is opened is checked before it is read.
    let mut flags = libc::O_NONBLOCK;
    if no_symlink {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) if no_symlink => {
                IngestError::Unreadable("is a symlink (not followed)".into())
            }
            _ => unreadable(e),
        })?;
    let meta = file.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(IngestError::Unreadable("is a directory".into()));
    }
    if !meta.is_file() {
        return Err(IngestError::Unreadable(
            "not a regular file (a FIFO, socket or device)".into(),
        ));
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

/// Record a file that could not be read (or published) as an `error` result
/// of worker `ingest`, and count it.
pub(crate) async fn record_unreadable(
    ctx: &crate::SourceContext,
    origin: &Origin,
    path: &Path,
    reason: &str,
) -> Result<(), TransportError> {
    ctx.stats.unreadable(&origin.sensor);
    let r = ingest_error_result(path, origin, &ctx.node, reason);
    trawl_transport::publish_result_fitting(ctx.transport.as_ref(), &r).await
}

/// An error result for a file that never became a payload, so the failure is
/// visible in the datastore next to the files that were scanned.
/// Carries the sensor's metadata, so the failure can be found by flow or filename.
pub fn ingest_error_result(path: &Path, origin: &Origin, node: &str, reason: &str) -> ResultEvent {
    let event = origin.event(
        origin
            .meta
            .hashes
            .get("sha256")
            // The sensor's word, kept only if it is a sha256 at all.
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .cloned()
            .unwrap_or_default(),
        0,
        BlobRef::Inline(Vec::new()),
        path,
    );
    ResultEvent::new(
        event.summary(),
        WorkerInfo::new(INGEST_WORKER, "1"),
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reading_ahead_stops_once_its_bytes_wait_to_be_taken() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..4)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, vec![i as u8; 100_000]).unwrap();
                p
            })
            .collect();
        let mut ahead = ReadAhead::new(paths.clone(), 1 << 30, 8, 150_000);
        let settled = |ahead: &ReadAhead, want: u64| {
            (0..500).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                ahead.held() == want
            })
        };
        // One file is under the limit, so a second is read; then it stops.
        assert!(settled(&ahead, 200_000), "{}", ahead.held());
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(ahead.held(), 200_000, "no third file while two wait");
        let (first, read) = ahead.next().await.unwrap();
        assert_eq!(first, paths[0]);
        assert_eq!(read.unwrap().data[0], 0);
        assert!(
            settled(&ahead, 200_000),
            "the third is read once one is taken"
        );
        for (i, want) in paths.iter().enumerate().skip(1) {
            let (path, read) = ahead.next().await.unwrap();
            assert_eq!(&path, want);
            assert_eq!(read.unwrap().data[0], i as u8);
        }
        assert!(ahead.next().await.is_none());
        assert_eq!(ahead.held(), 0);
    }

    #[tokio::test]
    async fn a_reader_at_its_depth_goes_on_once_half_its_files_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..20)
            .map(|i| {
                let p = dir.path().join(format!("f{i:02}"));
                std::fs::write(&p, [i as u8; 10]).unwrap();
                p
            })
            .collect();
        let mut ahead = ReadAhead::new(paths.clone(), 1 << 30, 8, 1 << 30);
        let settled = |ahead: &ReadAhead, want: u64| {
            (0..500).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                ahead.held() == want
            })
        };
        assert!(
            settled(&ahead, 80),
            "eight files of ten bytes: {}",
            ahead.held()
        );
        let mut taken = Vec::new();
        for _ in 0..3 {
            taken.push(ahead.next().await.unwrap().0);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(ahead.held(), 50, "no file read while more than half wait");
        taken.push(ahead.next().await.unwrap().0);
        assert!(settled(&ahead, 80), "filled again: {}", ahead.held());
        while let Some((path, read)) = ahead.next().await {
            assert_eq!(read.unwrap().data.len(), 10);
            taken.push(path);
        }
        assert_eq!(taken, paths, "every file, in order");
    }

    #[tokio::test]
    async fn a_file_gone_between_listing_and_reading_is_an_unreadable_error() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("brief");
        std::fs::write(&path, b"here for a moment").unwrap();
        let listed = crate::walk(&[d.path().to_path_buf()], false);
        assert_eq!(listed.files.len(), 1);
        std::fs::remove_file(&path).unwrap();
        let t = MemoryTransport::new(MemoryParams::default());
        let origin = Origin::new(SourceKind::Dir, "s");
        let err = ingest_file(&t, &listed.files[0].path, &origin, 1 << 20, false)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "file disappeared before it could be read");
    }

    #[tokio::test]
    async fn a_fifo_or_a_symlink_swapped_in_after_listing_is_refused_not_read() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere");
        std::fs::write(&target, b"outside the folder").unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let t = MemoryTransport::new(MemoryParams::default());
        let origin = Origin::new(SourceKind::Dir, "s");
        // No writer ever opens the FIFO: a blocking open would never return.
        let read = ingest_file(&t, &fifo, &origin, 1 << 20, false);
        let err = tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("a FIFO does not block the reader")
            .unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = ingest_file(&t, &link, &origin, 1 << 20, false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        ingest_file(&t, &link, &origin, 1 << 20, true)
            .await
            .expect("followed when asked");
    }

    #[tokio::test]
    async fn files_over_the_limit_are_not_read() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("big");
        std::fs::write(&path, vec![0u8; 2048]).unwrap();
        let t = MemoryTransport::new(MemoryParams::default());
        let mut origin = Origin::new(SourceKind::Dir, "s");
        origin.meta.filename = Some("as the sensor saw it".into());
        let err = ingest_file(&t, &path, &origin, 1024, false)
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
        let r = ingest_error_result(&path, &origin, "n", &err.to_string());
        assert_eq!(r.worker.name, INGEST_WORKER);
        assert_eq!(r.outcome.status, trawl_core::OutcomeStatus::Error);
        assert_eq!(r.payload.filename.as_deref(), Some("as the sensor saw it"));
        assert_eq!(r.payload.path.as_deref(), path.to_str());
    }
}
