//! The connection to the broker: one per node, made again (on the next
//! server in turn) whenever it is lost, with the exchanges every node
//! needs declared on each new one; and the channel results and payloads
//! are published on, with publisher confirms.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;
use trawl_core::Backoff;

use super::names::Names;
use super::params::{redact, RabbitParams};
use crate::TransportError;

/// Between tries to reach a broker.
pub(super) const CONNECT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_secs(15));

pub(super) struct Link {
    params: RabbitParams,
    names: Names,
    /// The connection's name on the broker (`trawl <node>`).
    name: String,
    /// Create the exchanges and the dead-letter queue on each connection
    /// (nodes); `false` only checks they exist (`trawl status`).
    provision: bool,
    current: Mutex<Option<Arc<Connection>>>,
    reads: Mutex<Option<Arc<Connection>>>,
    publisher: Mutex<Option<Channel>>,
    /// The server to try first next time.
    next_server: AtomicUsize,
}

/// Why the broker could not be used.
pub(super) fn unavailable(what: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Unavailable(format!("{what}: {e}"))
}

/// Whether the broker turned this client away for good (credentials,
/// vhost permissions): trying again will not help.
pub(super) fn refused(e: &lapin::Error) -> bool {
    let text = e.to_string();
    text.contains("ACCESS_REFUSED") || text.contains("NOT_ALLOWED")
}

impl Link {
    pub(super) fn new(params: RabbitParams, names: Names, node: &str, provision: bool) -> Self {
        Link {
            params,
            names,
            name: format!("trawl {node}"),
            provision,
            current: Mutex::new(None),
            reads: Mutex::new(None),
            publisher: Mutex::new(None),
            next_server: AtomicUsize::new(0),
        }
    }

    /// A live connection: the current one, or a new one to the first server
    /// that takes it (each tried once).
    pub(super) async fn connection(&self) -> Result<Arc<Connection>, TransportError> {
        self.kept(&self.current).await
    }

    /// The connection payload bytes are read from streams on: apart from
    /// the node's own for the reason `dedicated` gives, and kept.
    pub(super) async fn reads(&self) -> Result<Arc<Connection>, TransportError> {
        self.kept(&self.reads).await
    }

    async fn kept(
        &self,
        slot: &Mutex<Option<Arc<Connection>>>,
    ) -> Result<Arc<Connection>, TransportError> {
        let mut current = slot.lock().await;
        if let Some(c) = current.as_ref() {
            if c.status().connected() {
                return Ok(c.clone());
            }
        }
        *current = None;
        let c = self.connect_any().await?;
        *current = Some(c.clone());
        Ok(c)
    }

    /// A connection of its own, closed by whoever holds it.
    pub(super) async fn dedicated(&self) -> Result<Arc<Connection>, TransportError> {
        self.connect_any().await
    }

    /// A new connection to the first server that takes it, each tried once.
    async fn connect_any(&self) -> Result<Arc<Connection>, TransportError> {
        let servers = &self.params.servers;
        let first = self.next_server.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..servers.len() {
            let n = (first + i) % servers.len();
            match self.open(&servers[n]).await {
                Ok(c) => {
                    self.next_server.store(n, Ordering::Relaxed);
                    tracing::info!(server = %redact(&servers[n]), "connected to RabbitMQ");
                    return Ok(Arc::new(c));
                }
                Err(e) => {
                    tracing::debug!(server = %redact(&servers[n]), error = %e, "broker not reached");
                    last = Some(e);
                }
            }
        }
        self.next_server
            .store((first + 1) % servers.len(), Ordering::Relaxed);
        Err(last.expect("at least one server"))
    }

    /// The server connected to last (the first one before any connection).
    pub(super) fn server(&self) -> &str {
        &self.params.servers[self.next_server.load(Ordering::Relaxed) % self.params.servers.len()]
    }

    /// A new channel on the live connection.
    pub(super) async fn channel(&self) -> Result<Channel, TransportError> {
        self.connection()
            .await?
            .create_channel()
            .await
            .map_err(|e| unavailable("channel", e))
    }

    /// Connect, trying every server until one answers, waiting between
    /// rounds; a broker that refuses the credentials is an error at once.
    pub(super) async fn connect_patiently(&self) -> Result<(), TransportError> {
        let mut round = 0u32;
        loop {
            match self.connection().await {
                Ok(_) => return Ok(()),
                Err(e @ TransportError::Refused(_)) => return Err(e),
                Err(e @ TransportError::Missing(_)) => return Err(e),
                Err(e) => {
                    round += 1;
                    let delay = CONNECT_BACKOFF.delay(round);
                    tracing::warn!(error = %e, ?delay, "no RabbitMQ broker answers; trying again");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn open(&self, server: &str) -> Result<Connection, TransportError> {
        let shown = redact(server);
        // lapin's own recovery is off: this link reconnects, on the next server.
        let properties =
            ConnectionProperties::default().with_connection_name(self.name.clone().into());
        let tls = super::tls::config(&self.params)?;
        let runtime =
            lapin::runtime::default_runtime().map_err(|e| unavailable("tokio runtime", e))?;
        let connection = Connection::connect_with_config(server, properties, tls, runtime)
            .await
            .map_err(|e| {
                if refused(&e) {
                    TransportError::Refused(format!("broker {shown} refused this client: {e}"))
                } else {
                    unavailable(&format!("broker {shown}"), e)
                }
            })?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| unavailable("channel", e))?;
        self.declare_common(&channel).await?;
        let _ = channel.close(200, "done".into()).await;
        if self.provision {
            let n = &self.names;
            for stream in [&n.payload_log, &n.result_log, &n.replays] {
                super::log::declare_stream(&connection, stream, &self.params).await?;
            }
            super::log::declare_stream_kept(
                &connection,
                &n.announced,
                super::status::ANNOUNCED_KEPT,
                0,
            )
            .await?;
        }
        Ok(connection)
    }

    /// The exchanges and dead-letter queue every node uses, made if missing;
    /// `trawl status` only checks that a node made them.
    async fn declare_common(&self, channel: &Channel) -> Result<(), TransportError> {
        let n = &self.names;
        let exchanges = [
            (&n.payloads, ExchangeKind::Fanout),
            (&n.results, ExchangeKind::Topic),
            (&n.dead, ExchangeKind::Fanout),
        ];
        for (name, kind) in exchanges {
            let options = ExchangeDeclareOptions {
                durable: true,
                passive: !self.provision,
                ..Default::default()
            };
            channel
                .exchange_declare(name.as_str().into(), kind, options, FieldTable::default())
                .await
                .map_err(|e| {
                    if self.provision {
                        unavailable(&format!("exchange {name}"), e)
                    } else {
                        TransportError::Missing(format!("exchange {name}"))
                    }
                })?;
        }
        if self.provision {
            super::consume::declare_queue(channel, &n.dead, None, None).await?;
            channel
                .queue_bind(
                    n.dead.as_str().into(),
                    n.dead.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| unavailable("bind the dead-letter queue", e))?;
        }
        Ok(())
    }

    /// The channel messages are published on, in confirm mode.
    pub(super) async fn publisher(&self) -> Result<Channel, TransportError> {
        let mut publisher = self.publisher.lock().await;
        if let Some(channel) = publisher.as_ref() {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *publisher = None;
        let channel = self
            .connection()
            .await?
            .create_channel()
            .await
            .map_err(|e| unavailable("publish channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable("publisher confirms", e))?;
        *publisher = Some(channel.clone());
        Ok(channel)
    }
}
