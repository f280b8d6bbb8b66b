//! Payload bytes in the JetStream object store bucket, written and read in
//! the object store's own layout (chunks on `$O.<bucket>.C.<nuid>`, the
//! object's info on `$O.<bucket>.M.<name>`), so `nats object get` and every
//! other client read them, but without two costs of the generic client:
//! - a put hashes the bytes again and waits for each chunk's ack in turn;
//!   the sha256 is already known here (it is the object's name), and the
//!   chunks' acks are awaited together;
//! - a get creates an ordered consumer per object; here the info and each
//!   chunk are fetched with direct gets, one request each.

use std::time::Duration;

use async_nats::jetstream::object_store::{ObjectInfo, ObjectOptions};
use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use bytes::{Bytes, BytesMut};

use super::unavailable;
use crate::TransportError;

/// Chunks as large as the server takes (its `max_payload`, 1 MiB by
/// default), up to 1 MiB: fewer, larger messages cost the server less per
/// byte, and larger ones would hold up other traffic on the connection.
const MAX_CHUNK: usize = 1024 * 1024;

/// How often a missing info or chunk is asked for again: a direct get may
/// be answered by a replica that has not caught up yet.
const MISSING_RETRIES: u32 = 5;

/// Largest object read (4 GiB): an info claiming more is forged or broken,
/// and reading it would only exhaust memory.
const MAX_BLOB: usize = 4 << 30;

#[derive(Clone)]
pub(super) struct Blobs {
    js: Context,
    stream: stream::Stream,
    bucket: String,
}

impl Blobs {
    /// The bucket's stream must exist (created as an object store).
    pub async fn open(js: Context, bucket: &str) -> Result<Self, TransportError> {
        let stream = js
            .get_stream(format!("OBJ_{bucket}"))
            .await
            .map_err(|e| unavailable(&format!("object store {bucket}"), e))?;
        Ok(Blobs {
            js,
            stream,
            bucket: bucket.to_owned(),
        })
    }

    fn info_subject(&self, key: &str) -> String {
        format!("$O.{}.M.{}", self.bucket, URL_SAFE.encode(key))
    }

    /// The object's info, `None` when there is no such object. With `patient`
    /// a missing info is asked for again before it counts as missing.
    async fn info(&self, key: &str, patient: bool) -> Result<Option<ObjectInfo>, TransportError> {
        let subject = self.info_subject(key);
        let found = lagging(patient, || {
            self.stream.direct_get_last_for_subject(subject.as_str())
        })
        .await
        .map_err(|e| unavailable(&format!("blob {key} info"), e))?;
        let Some(m) = found else { return Ok(None) };
        let info: ObjectInfo = serde_json::from_slice(&m.payload)
            .map_err(|e| unavailable(&format!("blob {key} info"), e))?;
        Ok((!info.deleted).then_some(info))
    }

    pub async fn exists(&self, key: &str) -> Result<bool, TransportError> {
        // Not found on a lagging replica: stored again, which is harmless.
        self.info(key, false).await.map(|i| i.is_some())
    }

    /// Store `data` under `key`, its sha256 in hex.
    pub async fn put(&self, key: &str, data: &Bytes) -> Result<(), TransportError> {
        let digest =
            hex::decode(key).map_err(|_| unavailable("blob", format!("{key} is not a sha256")))?;
        let chunk_size = match self.js.client().server_info().max_payload {
            0 => MAX_CHUNK,
            limit => limit.min(MAX_CHUNK),
        };
        let nuid = ulid::Ulid::generate().to_string();
        let chunk_subject = format!("$O.{}.C.{nuid}", self.bucket);
        let mut acks = Vec::new();
        for chunk in data.chunks(chunk_size) {
            let ack = self
                .js
                .publish(chunk_subject.clone(), data.slice_ref(chunk))
                .await
                .map_err(|e| unavailable(&format!("blob {key}"), e))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| unavailable(&format!("blob {key}"), e))?;
        }
        let info = ObjectInfo {
            name: key.to_owned(),
            description: None,
            metadata: Default::default(),
            headers: None,
            options: Some(ObjectOptions {
                link: None,
                max_chunk_size: Some(chunk_size),
            }),
            bucket: self.bucket.clone(),
            nuid,
            size: data.len(),
            chunks: data.len().div_ceil(chunk_size),
            modified: Some(async_nats::datetime::now()),
            digest: Some(format!("SHA-256={}", URL_SAFE.encode(digest))),
            deleted: false,
        };
        let mut headers = HeaderMap::new();
        // The newest info replaces older ones for the same name.
        headers.insert(async_nats::header::NATS_ROLLUP, "sub");
        let body = serde_json::to_vec(&info).map_err(|e| unavailable("blob info", e))?;
        self.js
            .publish_with_headers(self.info_subject(key), headers, body.into())
            .await
            .map_err(|e| unavailable(&format!("blob {key} info"), e))?
            .await
            .map_err(|e| unavailable(&format!("blob {key} info"), e))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, TransportError> {
        let info = self
            .info(key, true)
            .await?
            .ok_or_else(|| TransportError::BlobMissing(key.to_owned()))?;
        // The info is data anyone who can publish on the server may forge:
        // its size and chunk count bound nothing until checked.
        let corrupt = |why: String| TransportError::BlobCorrupt {
            key: key.to_owned(),
            why,
        };
        if info.size > MAX_BLOB || info.chunks > info.size.max(1) {
            return Err(corrupt(format!(
                "object info claims {} bytes in {} chunks",
                info.size, info.chunks
            )));
        }
        let subject = format!("$O.{}.C.{}", self.bucket, info.nuid);
        let mut parts = Vec::with_capacity(info.chunks.min(1024));
        let mut read = 0usize;
        let mut next = 1;
        while parts.len() < info.chunks {
            let m = lagging(true, || {
                self.stream
                    .direct_get_next_for_subject(subject.as_str(), Some(next))
            })
            .await
            .map_err(|e| unavailable(&format!("blob {key}"), e))?
            // The info is there: a chunk not seen yet is lag, to be retried.
            .ok_or_else(|| unavailable(&format!("blob {key}"), "a chunk is not readable yet"))?;
            next = m.sequence + 1;
            read += m.payload.len();
            if read > info.size {
                return Err(corrupt(format!(
                    "chunks hold more than the {} bytes stored",
                    info.size
                )));
            }
            parts.push(m.payload);
        }
        if read != info.size {
            return Err(unavailable(
                &format!("blob {key}"),
                format!("{read} bytes read, {} stored", info.size),
            ));
        }
        let data = match parts.len() {
            1 => parts.pop().expect("one part"),
            _ => {
                let mut all = BytesMut::with_capacity(read);
                for p in parts {
                    all.extend_from_slice(&p);
                }
                all.freeze()
            }
        };
        // Content-addressed: bytes that are not what their name says are
        // never scanned as if they were.
        let actual = trawl_core::sha256_hex(&data);
        if !actual.eq_ignore_ascii_case(key) {
            return Err(corrupt(format!("the stored bytes hash to {actual}")));
        }
        Ok(data)
    }
}

/// A direct get, `None` when the message is not there. A direct get may be
/// answered by a replica that has not caught up yet: when `patient`, a miss
/// is asked again a few times before it counts.
async fn lagging<F, Fut>(
    patient: bool,
    get: F,
) -> Result<Option<jetstream::message::StreamMessage>, stream::DirectGetError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<
        Output = Result<jetstream::message::StreamMessage, stream::DirectGetError>,
    >,
{
    let mut attempt = 0;
    loop {
        match get().await {
            Ok(m) => return Ok(Some(m)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {
                if !patient || attempt == MISSING_RETRIES {
                    return Ok(None);
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e),
        }
    }
}
