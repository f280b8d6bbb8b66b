//! Reaching the servers (auth, TLS, retries), creating the streams and
//! object store a node needs, and reporting on them.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, object_store, stream};
use futures::StreamExt;
use tokio::sync::Notify;
use trawl_core::Backoff;

use super::{batch, blobs, unavailable, JetStreamParams, JetStreamTransport, Names};
use crate::{ConsumerStatus, GroupState, NodeState, StreamStatus, TransportError, TransportStatus};

/// How long a node's announced group state is listed without a refresh.
const GROUP_STATE_AGE: Duration = Duration::from_secs(600);

/// Between tries to reach the servers and their streams.
const CONNECT_BACKOFF: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(30));

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
        let js = match &params.domain {
            Some(domain) => jetstream::with_domain(client, domain),
            None => jetstream::new(client),
        };
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
            stream(&names.replay, vec![format!("{p}.replay.>")], 0),
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
        let (blobs, scanned) = loop {
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
                    for (bucket, max_age) in [
                        (&names.replays, max_age),
                        (&names.scanned, max_age),
                        // Nodes announce their groups every minute; a
                        // node gone this long is no longer listed.
                        (&names.nodes, GROUP_STATE_AGE),
                    ] {
                        let what = format!("bucket {bucket}");
                        if js.get_key_value(bucket).await.is_err() {
                            js.create_key_value(async_nats::jetstream::kv::Config {
                                bucket: bucket.clone(),
                                history: 1,
                                max_age,
                                storage: stream::StorageType::File,
                                num_replicas: params.replicas,
                                ..Default::default()
                            })
                            .await
                            .map_err(|e| unavailable(&what, e))?;
                        }
                    }
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
                let scanned = if provision {
                    let what = format!("bucket {}", names.scanned);
                    Some(
                        js.get_key_value(&names.scanned)
                            .await
                            .map_err(|e| unavailable(&what, e))?,
                    )
                } else {
                    None
                };
                Ok((blobs::Blobs::open(js.clone(), &names.blobs).await?, scanned))
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
            results: batch::Batcher::start(js.clone()),
            js,
            blobs,
            fetched: Arc::new(crate::fetched::Fetched::new(params.blob_cache)),
            scanned,
            pace: Arc::new(crate::pace::Pace::new(params.group_lead)),
            names: Arc::new(names),
            inline_limit: params.inline_limit,
            closed: Arc::new(AtomicBool::new(false)),
            shutdown: Arc::new(Notify::new()),
        })
    }

    /// Streams and consumers with their backlog, and what each node and
    /// its groups announced.
    pub async fn status(&self) -> Result<TransportStatus, TransportError> {
        let (groups, nodes) = self.announced().await?;
        Ok(TransportStatus {
            streams: self.streams().await?,
            groups,
            nodes,
        })
    }

    /// What every node announced of itself and its groups, by node and group.
    async fn announced(&self) -> Result<(Vec<GroupState>, Vec<NodeState>), TransportError> {
        let (mut groups, mut nodes) = (Vec::new(), Vec::new());
        // Nodes of an older version made no bucket: nothing announced.
        let Ok(bucket) = self.js.get_key_value(&self.names.nodes).await else {
            return Ok((groups, nodes));
        };
        let mut keys = bucket
            .keys()
            .await
            .map_err(|e| unavailable("nodes bucket", e))?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| unavailable("nodes bucket", e))?;
            let Some(value) = bucket
                .get(&key)
                .await
                .map_err(|e| unavailable("nodes bucket", e))?
            else {
                continue;
            };
            // An entry another version wrote in another shape is skipped.
            if key.contains('.') {
                groups.extend(serde_json::from_slice::<GroupState>(&value).ok());
            } else {
                nodes.extend(serde_json::from_slice::<NodeState>(&value).ok());
            }
        }
        groups.sort_by(|a, b| (&a.node, &a.group).cmp(&(&b.node, &b.group)));
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok((groups, nodes))
    }

    /// Streams and consumers with their backlog.
    async fn streams(&self) -> Result<Vec<StreamStatus>, TransportError> {
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
                    members: None,
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
