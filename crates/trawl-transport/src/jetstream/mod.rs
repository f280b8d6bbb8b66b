//! NATS JetStream transport (DESIGN.md §4): payload events in a stream,
//! payload bytes in an object store keyed by sha256, results in a second
//! stream, one durable pull consumer per worker group and per connector,
//! and a dead-letter stream for what cannot be handled.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, object_store, stream, AckKind};
use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{Mutex, Notify, OnceCell};
use trawl_config::NonZeroDuration;
use trawl_core::{wire, Backoff, BlobRef, PayloadEvent, ResultEvent};

use crate::{
    Acker, ConsumerOptions, ConsumerStatus, Delivery, StreamStatus, Subscription, Transport,
    TransportError,
};

mod blobs;
mod factory;
mod pace;

pub(crate) use factory::JetStreamFactory;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamParams {
    /// One or more server URLs, e.g. `nats://127.0.0.1:4222`.
    pub servers: Vec<String>,
    /// Prefix of subjects (`trawl.payload.…`) and stream names (`TRAWL_PAYLOADS`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    /// An nkey seed (`SU…`).
    #[serde(default)]
    pub nkey: Option<String>,
    /// A `.creds` file (JWT and seed).
    #[serde(default)]
    pub creds: Option<PathBuf>,
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub tls_required: bool,
    /// Stream and object store replicas: 1 on one server, 3 on a cluster.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long payloads (and their bytes) stay replayable.
    #[serde(default = "default_max_age")]
    pub max_age: NonZeroDuration,
    /// Size cap of the payload stream and of the blob store (bytes; 0 =
    /// none). A full payload stream refuses new payloads (sources wait)
    /// rather than drop stored ones that were never scanned.
    #[serde(default)]
    pub max_bytes: i64,
    /// How long the server remembers a publish's id to drop a republish of
    /// it (a source restarted mid-publish).
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: NonZeroDuration,
    /// Payloads up to this size travel inside the event.
    #[serde(default = "default_inline_limit")]
    pub inline_limit: usize,
    /// Recently fetched payload bytes kept on this node, so that its worker
    /// groups fetch a stored payload once rather than once each.
    #[serde(default = "default_blob_cache")]
    pub blob_cache: usize,
    /// How many stream positions one worker group of this node may run ahead
    /// of another that is still moving, so that bytes one group fetched are
    /// still in `blob_cache` when the others ask (0: each at its own speed).
    #[serde(default = "default_group_lead")]
    pub group_lead: u64,
}

fn default_group_lead() -> u64 {
    16
}

fn default_blob_cache() -> usize {
    64 * 1024 * 1024
}

fn default_prefix() -> String {
    "trawl".into()
}
fn default_replicas() -> usize {
    1
}
fn default_max_age() -> NonZeroDuration {
    NonZeroDuration::from_secs(7 * 24 * 3600)
}
fn default_duplicate_window() -> NonZeroDuration {
    NonZeroDuration::from_secs(600)
}
fn default_inline_limit() -> usize {
    // Inline bytes are read once per worker group, stored ones once per node.
    64 * 1024
}

impl JetStreamParams {
    /// Checks that need no server.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("servers: name at least one server URL".into());
        }
        if self.prefix.is_empty()
            || !self
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "prefix: {:?} must be letters, digits, '_' or '-'",
                self.prefix
            ));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err("replicas: must be between 1 and 5".into());
        }
        if self.password.is_some() != self.user.is_some() {
            return Err("user and password go together".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key go together".into());
        }
        if self.duplicate_window > self.max_age {
            return Err(format!(
                "duplicate_window: must be at most max_age ({})",
                self.max_age
            ));
        }
        Ok(())
    }
}

/// Names derived from the prefix.
#[derive(Debug, Clone)]
struct Names {
    prefix: String,
    payloads: String,
    results: String,
    dlq: String,
    blobs: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        let upper = prefix.to_ascii_uppercase().replace('-', "_");
        Names {
            prefix: prefix.to_owned(),
            payloads: format!("{upper}_PAYLOADS"),
            results: format!("{upper}_RESULTS"),
            dlq: format!("{upper}_DLQ"),
            blobs: format!("{upper}_BLOBS"),
        }
    }
}

/// A subject token from free text (sensor and worker names).
/// What a published message's headers (its id) may take of the server's
/// message size limit.
const HEADER_ROOM: usize = 1024;

/// Longest `Trawl-Reason` kept: the reason also lands in the error result.
const MAX_HEADER_VALUE: usize = 1024;

/// A header value from text that may echo a crafted message (decode errors
/// quote what they read): control characters, CR and LF among them, would
/// break the header block, so they become spaces, and the value is capped.
fn header_value(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    out.truncate(out.floor_char_boundary(MAX_HEADER_VALUE));
    out
}

fn token(text: &str) -> String {
    let t: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// Byte-bounded, first-in first-out cache of payload bytes by sha256.
struct BlobCache {
    capacity: usize,
    used: usize,
    order: std::collections::VecDeque<String>,
    entries: std::collections::HashMap<String, Bytes>,
}

impl BlobCache {
    fn new(capacity: usize) -> Self {
        BlobCache {
            capacity,
            used: 0,
            order: Default::default(),
            entries: Default::default(),
        }
    }

    fn get(&self, key: &str) -> Option<Bytes> {
        self.entries.get(key).cloned()
    }

    fn insert(&mut self, key: &str, data: Bytes) {
        if data.len() > self.capacity / 2 || self.entries.contains_key(key) {
            return;
        }
        while self.used + data.len() > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.entries.remove(&old) {
                self.used -= gone.len();
            }
        }
        self.used += data.len();
        self.order.push_back(key.to_owned());
        self.entries.insert(key.to_owned(), data);
    }
}

/// Fetches under way, by sha256, each shared by everyone waiting for it.
type Inflight = std::sync::Mutex<HashMap<String, Arc<OnceCell<Result<Bytes, FetchFailed>>>>>;

/// A shared fetch's failure, kept apart so that "gone" stays distinct from
/// "unreachable for now" for every caller.
#[derive(Clone)]
enum FetchFailed {
    Missing(String),
    Corrupt(String, String),
    Unavailable(String),
}

#[derive(Clone)]
pub struct JetStreamTransport {
    js: jetstream::Context,
    blobs: blobs::Blobs,
    cache: Arc<std::sync::Mutex<BlobCache>>,
    inflight: Arc<Inflight>,
    reads: Arc<Reads>,
    pace: Arc<pace::Pace>,
    names: Arc<Names>,
    inline_limit: usize,
    closed: Arc<AtomicBool>,
    shutdown: Arc<Notify>,
}

#[derive(Default)]
struct Reads {
    asked: AtomicU64,
    from_store: AtomicU64,
}

/// How this node's worker groups got stored payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobReads {
    /// Read from the blob store.
    pub from_store: u64,
    /// Served by this node's cache or by a read another group had under way.
    pub shared: u64,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Unavailable(format!("{what}: {e}"))
}

impl JetStreamTransport {
    /// Connect (retrying in the background while no server answers) and
    /// create or update the streams, object store and dead-letter stream.
    pub async fn connect(params: &JetStreamParams, node: &str) -> Result<Self, TransportError> {
        Self::open(params, node, true).await
    }

    /// Connect to the streams a node created, changing nothing (for `trawl
    /// status` and `config check --connect`): a missing stream is an error.
    pub async fn attach(params: &JetStreamParams, node: &str) -> Result<Self, TransportError> {
        Self::open(params, node, false).await
    }

    async fn open(
        params: &JetStreamParams,
        node: &str,
        provision: bool,
    ) -> Result<Self, TransportError> {
        params.validate().map_err(TransportError::Unavailable)?;
        let (max_age, duplicate_window) = (params.max_age.get(), params.duplicate_window.get());
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("trawl {node}"))
            .retry_on_initial_connect()
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; reconnecting")
                    }
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(error = %e, "NATS server error")
                    }
                    other => tracing::debug!(event = %other, "nats event"),
                }
            });
        if let (Some(user), Some(password)) = (&params.user, &params.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &params.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &params.nkey {
            options = options.nkey(seed.clone());
        }
        if let Some(creds) = &params.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| unavailable(&format!("creds {}", creds.display()), e))?;
        }
        if let Some(ca) = &params.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&params.tls_cert, &params.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        // TLS settings mean TLS, whatever the URL's scheme says: a `nats://`
        // URL must not quietly fall back to plain text.
        if params.tls_required || params.tls_ca.is_some() || params.tls_cert.is_some() {
            options = options.require_tls(true);
        }
        let servers: Vec<async_nats::ServerAddr> = params
            .servers
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|e| unavailable(&format!("server {s}"), e))
            })
            .collect::<Result<_, _>>()?;
        let client = options
            .connect(servers)
            .await
            .map_err(|e| unavailable("connect", e))?;
        let js = jetstream::new(client);
        let names = Names::new(&params.prefix);
        let stream = |name: &str, subjects: Vec<String>, max_bytes: i64| stream::Config {
            name: name.to_owned(),
            subjects,
            storage: stream::StorageType::File,
            num_replicas: params.replicas,
            max_age,
            max_bytes: if max_bytes > 0 { max_bytes } else { -1 },
            // Full means "wait", never "forget work not yet done".
            discard: stream::DiscardPolicy::New,
            duplicate_window,
            ..Default::default()
        };
        let p = &names.prefix;
        let configs = [
            stream(
                &names.payloads,
                vec![format!("{p}.payload.>")],
                params.max_bytes,
            ),
            stream(&names.results, vec![format!("{p}.result.>")], 0),
            stream(&names.dlq, vec![format!("{p}.dlq.>")], 0),
        ];
        let blobs_config = object_store::Config {
            bucket: names.blobs.clone(),
            max_age,
            max_bytes: if params.max_bytes > 0 {
                params.max_bytes
            } else {
                -1
            },
            storage: stream::StorageType::File,
            num_replicas: params.replicas,
            ..Default::default()
        };
        let mut attempt = 0u32;
        let blobs = loop {
            let ready = async {
                for c in &configs {
                    let what = format!("stream {}", c.name);
                    if provision {
                        js.create_or_update_stream(c.clone())
                            .await
                            .map_err(|e| unavailable(&what, e))?;
                    } else {
                        js.get_stream(&c.name).await.map_err(|e| {
                            // The server answered that there is no such stream.
                            if matches!(
                                e.kind(),
                                jetstream::context::GetStreamErrorKind::JetStream(_)
                            ) {
                                TransportError::Missing(what.clone())
                            } else {
                                unavailable(&what, e)
                            }
                        })?;
                    }
                }
                if provision {
                    let what = format!("object store {}", names.blobs);
                    if js.get_object_store(&names.blobs).await.is_err() {
                        js.create_object_store(blobs_config.clone())
                            .await
                            .map_err(|e| unavailable(&what, e))?;
                    }
                    // The object store's own config cannot say it: a full
                    // store must refuse new bytes, never drop the chunks of
                    // payloads not yet scanned.
                    let mut stream = js
                        .get_stream(format!("OBJ_{}", names.blobs))
                        .await
                        .map_err(|e| unavailable(&what, e))?;
                    let mut config = stream
                        .info()
                        .await
                        .map_err(|e| unavailable(&what, e))?
                        .config
                        .clone();
                    if config.discard != stream::DiscardPolicy::New {
                        config.discard = stream::DiscardPolicy::New;
                        js.update_stream(config)
                            .await
                            .map_err(|e| unavailable(&what, e))?;
                    }
                }
                blobs::Blobs::open(js.clone(), &names.blobs).await
            };
            match ready.await {
                Ok(store) => break store,
                // Nothing to wait for: the streams are made by a node, not here.
                Err(e @ TransportError::Missing(_)) => return Err(e),
                Err(e) => {
                    attempt += 1;
                    let delay = CONNECT_BACKOFF.delay(attempt);
                    tracing::warn!(error = %e, attempt, ?delay, "JetStream not ready; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        tracing::info!(payloads = %names.payloads, results = %names.results, blobs = %names.blobs, "JetStream ready");
        Ok(JetStreamTransport {
            js,
            blobs,
            cache: Arc::new(std::sync::Mutex::new(BlobCache::new(params.blob_cache))),
            inflight: Arc::default(),
            reads: Arc::default(),
            pace: Arc::new(pace::Pace::new(params.group_lead)),
            names: Arc::new(names),
            inline_limit: params.inline_limit,
            closed: Arc::new(AtomicBool::new(false)),
            shutdown: Arc::new(Notify::new()),
        })
    }

    async fn publish(
        &self,
        subject: String,
        id: &str,
        payload: Bytes,
    ) -> Result<(), TransportError> {
        // The server refuses a message over its limit every time it is sent:
        // the caller is told so, rather than retrying forever.
        let limit = self.js.client().server_info().max_payload;
        if limit > 0 && payload.len() + HEADER_ROOM > limit {
            return Err(TransportError::TooLarge {
                size: payload.len(),
                limit: limit.saturating_sub(HEADER_ROOM),
            });
        }
        let ack = self
            .js
            .send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .message_id(id),
            )
            .await
            .map_err(|e| unavailable("publish", e))?;
        ack.await.map_err(|e| unavailable("publish ack", e))?;
        Ok(())
    }

    async fn subscribe(
        &self,
        stream: &str,
        durable: String,
        filter: String,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        // Worker groups on the payload stream share fetched bytes.
        let paced = stream == self.names.payloads;
        let stream = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| unavailable(&format!("stream {stream}"), e))?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: filter,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: options.ack_wait,
                // One delivery past the limit reaches the caller, which records the failure.
                max_deliver: options.max_deliver.saturating_add(1) as i64,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&format!("consumer {durable}"), e))?;
        let pace = paced.then(|| self.pace.join(&durable));
        Ok(Arc::new(JetStreamSubscription::new(
            self.clone(),
            consumer,
            options.prefetch,
            durable,
            pace,
        )))
    }

    /// How stored payload bytes reached this node's worker groups so far.
    pub fn blob_reads(&self) -> BlobReads {
        let from_store = self.reads.from_store.load(Ordering::Relaxed);
        BlobReads {
            from_store,
            shared: self
                .reads
                .asked
                .load(Ordering::Relaxed)
                .saturating_sub(from_store),
        }
    }

    async fn fetch_stored(&self, key: &str) -> Result<Bytes, TransportError> {
        self.reads.from_store.fetch_add(1, Ordering::Relaxed);
        let data = self.blobs.get(key).await?;
        self.cache
            .lock()
            .expect("cache lock")
            .insert(key, data.clone());
        Ok(data)
    }

    /// Streams and consumers with their backlog.
    pub async fn status(&self) -> Result<Vec<StreamStatus>, TransportError> {
        let mut out = Vec::new();
        for name in [&self.names.payloads, &self.names.results, &self.names.dlq] {
            let mut stream = self
                .js
                .get_stream(name)
                .await
                .map_err(|e| unavailable(&format!("stream {name}"), e))?;
            let info = stream
                .info()
                .await
                .map_err(|e| unavailable(&format!("stream {name}"), e))?
                .clone();
            let mut consumers = Vec::new();
            let mut list = stream.consumers();
            while let Some(c) = list.next().await {
                let c = c.map_err(|e| unavailable("consumers", e))?;
                consumers.push(ConsumerStatus {
                    name: c.name.clone(),
                    pending: c.num_pending,
                    ack_pending: c.num_ack_pending,
                    redelivered: c.num_redelivered,
                });
            }
            consumers.sort_by(|a, b| a.name.cmp(&b.name));
            let state = info.state;
            let when = |t: time::OffsetDateTime, n: u64| {
                (n > 0).then(|| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                })
            };
            out.push(StreamStatus {
                name: name.clone(),
                messages: state.messages,
                bytes: state.bytes,
                first: when(state.first_timestamp, state.messages),
                last: when(state.last_timestamp, state.messages),
                consumers,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl Transport for JetStreamTransport {
    async fn publish_payload(
        &self,
        mut event: PayloadEvent,
        data: Bytes,
    ) -> Result<(), TransportError> {
        // Inline bytes leave room in the message for the event's metadata.
        let room = match self.js.client().server_info().max_payload {
            0 => self.inline_limit,
            limit => self.inline_limit.min(limit / 2),
        };
        if data.len() <= room {
            event.blob = BlobRef::Inline(data.to_vec());
        } else {
            let key = event.sha256.clone();
            // Stored once however many sensors see the file.
            if !self.blobs.exists(&key).await? {
                self.blobs.put(&key, &data).await?;
            }
            event.blob = BlobRef::Store(key);
        }
        let subject = format!(
            "{}.payload.{}.{}",
            self.names.prefix,
            event.source.kind.as_str(),
            token(&event.source.sensor)
        );
        let id = event.ingest_key.clone().unwrap_or_else(|| event.id.clone());
        let encoded = Bytes::from(wire::encode(&event)?);
        self.publish(subject, &id, encoded).await
    }

    async fn fetch_blob(&self, blob: &BlobRef) -> Result<Bytes, TransportError> {
        match blob {
            BlobRef::Inline(data) => Ok(Bytes::copy_from_slice(data)),
            BlobRef::Store(key) => {
                self.reads.asked.fetch_add(1, Ordering::Relaxed);
                if let Some(hit) = self.cache.lock().expect("cache lock").get(key) {
                    return Ok(hit);
                }
                // Groups asking for the same payload at once share one fetch.
                let cell = self
                    .inflight
                    .lock()
                    .expect("inflight lock")
                    .entry(key.clone())
                    .or_default()
                    .clone();
                let fetched = cell
                    .get_or_init(|| async {
                        self.fetch_stored(key).await.map_err(|e| match e {
                            TransportError::BlobMissing(k) => FetchFailed::Missing(k),
                            TransportError::BlobCorrupt { key, why } => {
                                FetchFailed::Corrupt(key, why)
                            }
                            TransportError::Unavailable(why) => FetchFailed::Unavailable(why),
                            e => FetchFailed::Unavailable(e.to_string()),
                        })
                    })
                    .await
                    .clone();
                self.inflight.lock().expect("inflight lock").remove(key);
                fetched.map_err(|e| match e {
                    FetchFailed::Missing(k) => TransportError::BlobMissing(k),
                    FetchFailed::Corrupt(key, why) => TransportError::BlobCorrupt { key, why },
                    FetchFailed::Unavailable(why) => TransportError::Unavailable(why),
                })
            }
        }
    }

    async fn publish_result(&self, result: &ResultEvent) -> Result<(), TransportError> {
        let subject = format!(
            "{}.result.{}",
            self.names.prefix,
            token(&result.worker.name)
        );
        let encoded = Bytes::from(wire::encode(result)?);
        // A re-publish of the same result is dropped as a duplicate; a new
        // outcome (the verdict after an error that asked for a retry) is not.
        let id = format!("{}.{}", result.id, result.outcome.status.as_str());
        self.publish(subject, &id, encoded).await
    }

    async fn payloads(
        &self,
        group: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        let filter = format!("{}.payload.>", self.names.prefix);
        self.subscribe(
            &self.names.payloads,
            format!("worker-{}", token(group)),
            filter,
            options,
        )
        .await
    }

    async fn results_of(
        &self,
        group: &str,
        worker: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        let filter = format!("{}.result.{}", self.names.prefix, token(worker));
        self.subscribe(
            &self.names.results,
            format!("worker-{}", token(group)),
            filter,
            options,
        )
        .await
    }

    async fn results(
        &self,
        name: &str,
        options: ConsumerOptions,
    ) -> Result<Arc<dyn Subscription>, TransportError> {
        let filter = format!("{}.result.>", self.names.prefix);
        self.subscribe(
            &self.names.results,
            format!("connector-{}", token(name)),
            filter,
            options,
        )
        .await
    }

    fn close(&self) {
        let reads = self.blob_reads();
        tracing::info!(
            from_store = reads.from_store,
            shared = reads.shared,
            "stored payloads read by this node's worker groups"
        );
        self.closed.store(true, Ordering::SeqCst);
        self.shutdown.notify_waiters();
    }
}

/// How long one pull request stays open at the server. A request the
/// server lost (its consumer leader moved or restarted) is given up, and a
/// new one made, this long (plus the client's 5 s of slack) after it was sent.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Between tries to reach the servers and their streams.
const CONNECT_BACKOFF: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(30));

/// Between pulls that failed in a row.
const PULL_BACKOFF: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

struct JetStreamSubscription {
    transport: JetStreamTransport,
    /// Messages pulled for this node's members of the group, by [`pump`].
    messages: Mutex<tokio::sync::mpsc::Receiver<jetstream::Message>>,
    /// This group's place among the node's paced groups (payload consumers).
    pace: Option<usize>,
    name: String,
}

impl JetStreamSubscription {
    fn new(
        transport: JetStreamTransport,
        consumer: consumer::Consumer<consumer::pull::Config>,
        prefetch: usize,
        name: String,
        pace: Option<usize>,
    ) -> Self {
        // Room for two requests' worth: the next is asked for while the
        // members still have the previous one's messages to work on.
        let (tx, rx) = tokio::sync::mpsc::channel(2 * prefetch.max(1));
        tokio::spawn(pump(
            transport.clone(),
            consumer,
            name.clone(),
            prefetch.max(1),
            tx,
        ));
        JetStreamSubscription {
            transport,
            messages: Mutex::new(rx),
            pace,
            name,
        }
    }
}

/// trawl's own pull loop. Each request asks for `batch` messages once there
/// is room for them in the group's queue, and every message is moved there
/// as it arrives: the request's accounting is trivial (used up, expired or
/// failed, then the next one), unlike the client's continuous pull, whose
/// count of messages still owed can end too high when replies overtake its
/// bookkeeping, after which it never asks again; and no message waits
/// inside a request whose client-side timer may end it and drop what it held.
async fn pump(
    transport: JetStreamTransport,
    consumer: consumer::Consumer<consumer::pull::Config>,
    name: String,
    batch: usize,
    tx: tokio::sync::mpsc::Sender<jetstream::Message>,
) {
    let mut failures = 0u32;
    loop {
        let permits = tokio::select! {
            _ = transport.shutdown.notified() => return,
            permits = tx.reserve_many(batch) => match permits {
                Ok(permits) => permits,
                // The subscription is gone.
                Err(_) => return,
            },
        };
        if transport.closed.load(Ordering::SeqCst) {
            return;
        }
        let pulled = consumer
            .batch()
            .max_messages(batch)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let failure = match pulled {
            Ok(mut batch) => {
                let mut permits = permits;
                let mut failure = None;
                loop {
                    let next = tokio::select! {
                        _ = transport.shutdown.notified() => return,
                        next = batch.next() => next,
                    };
                    match next {
                        Some(Ok(message)) => {
                            failures = 0;
                            match permits.next() {
                                Some(permit) => permit.send(message),
                                // Never more than asked for; kept safe regardless.
                                None => break,
                            }
                        }
                        Some(Err(e)) => {
                            failure = Some(e.to_string());
                            break;
                        }
                        None => break,
                    }
                }
                failure
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failure {
            failures += 1;
            let delay = PULL_BACKOFF.delay(failures);
            tracing::warn!(consumer = %name, error = %e, ?delay, "pull interrupted; starting a new one");
            tokio::select! {
                _ = transport.shutdown.notified() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[async_trait]
impl Subscription for JetStreamSubscription {
    async fn next(&self) -> Result<Option<Delivery>, TransportError> {
        let shutdown = self.transport.shutdown.notified();
        if self.transport.closed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let message = tokio::select! {
            _ = shutdown => return Ok(None),
            message = async { self.messages.lock().await.recv().await } => message,
        };
        // The pump stopped: the transport is closing.
        let Some(message) = message else {
            return Ok(None);
        };
        let (attempt, seq) = message
            .info()
            .map(|i| (i.delivered.max(1) as u32, i.stream_sequence))
            .unwrap_or((1, 0));
        if let Some(me) = self.pace {
            // Dropped unacknowledged on shutdown: delivered again later.
            let shutdown = self.transport.shutdown.notified();
            tokio::select! {
                _ = shutdown => return Ok(None),
                _ = self.transport.pace.admit(me, seq) => {}
            }
        }
        Ok(Some(Delivery::new(
            message.payload.clone(),
            attempt,
            Box::new(JetStreamAcker {
                consumer: self.name.clone(),
                message,
                transport: self.transport.clone(),
            }),
        )))
    }
}

struct JetStreamAcker {
    message: jetstream::Message,
    transport: JetStreamTransport,
    consumer: String,
}

#[async_trait]
impl Acker for JetStreamAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.message.ack().await.map_err(|e| unavailable("ack", e))
    }

    async fn nak(self: Box<Self>, delay: Duration) -> Result<(), TransportError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| unavailable("nak", e))
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| unavailable("progress", e))
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), TransportError> {
        let t = &self.transport;
        let mut headers = HeaderMap::new();
        headers.insert("Trawl-Reason", header_value(reason).as_str());
        headers.insert("Trawl-Subject", self.message.subject.as_str());
        headers.insert("Trawl-Consumer", self.consumer.as_str());
        let subject = format!("{}.dlq.{}", t.names.prefix, token(&self.consumer));
        let ack =
            t.js.send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .payload(self.message.payload.clone())
                    .headers(headers),
            )
            .await
            .map_err(|e| unavailable("dead-letter publish", e))?;
        ack.await.map_err(|e| unavailable("dead-letter ack", e))?;
        tracing::error!(consumer = %self.consumer, reason, "message moved to the dead-letter stream");
        self.message.ack().await.map_err(|e| unavailable("ack", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_cache_keeps_recent_bytes_within_its_capacity() {
        let mut c = BlobCache::new(100);
        c.insert("a", Bytes::from(vec![1; 40]));
        c.insert("b", Bytes::from(vec![2; 40]));
        assert_eq!(c.get("a").unwrap().len(), 40);
        c.insert("c", Bytes::from(vec![3; 40]));
        assert!(c.get("a").is_none(), "oldest evicted");
        assert!(c.get("b").is_some() && c.get("c").is_some());
        assert_eq!(c.used, 80);
        c.insert("huge", Bytes::from(vec![4; 60]));
        assert!(
            c.get("huge").is_none(),
            "over half the capacity is not cached"
        );
    }

    #[test]
    fn a_reason_echoing_crlf_makes_a_valid_header() {
        let reason = format!(
            "unknown variant `x\r\nTrawl-Forged: 1\r\n`{}",
            "é".repeat(800)
        );
        let v = header_value(&reason);
        assert!(!v.contains(['\r', '\n']));
        assert!(v.len() <= MAX_HEADER_VALUE);
        let mut headers = HeaderMap::new();
        headers.insert("Trawl-Reason", v.as_str());
        assert_eq!(headers.get("Trawl-Reason").unwrap().as_str(), v);
    }

    #[test]
    fn subject_tokens_never_carry_wildcards_or_dots() {
        assert_eq!(token("sensor.1 *>"), "sensor_1___");
        assert_eq!(token(""), "_");
        assert_eq!(Names::new("trawl-test").payloads, "TRAWL_TEST_PAYLOADS");
    }
}
