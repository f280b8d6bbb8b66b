//! `[transport] type = "jetstream"`: its keys and the checks that need no server.

use std::path::PathBuf;

use serde::Deserialize;
use trawl_config::NonZeroDuration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamParams {
    /// One or more server URLs, e.g. `nats://127.0.0.1:4222`.
    pub servers: Vec<String>,
    /// Prefix of subjects (`trawl.payload.…`) and stream names (`TRAWL_PAYLOADS`).
    #[serde(default = "crate::token::default_prefix")]
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
    /// The JetStream domain of the servers that keep the streams, for a node
    /// that reaches them through a leaf node (`$JS.DOMAIN.API`); `None`: the
    /// servers it connects to.
    #[serde(default)]
    pub domain: Option<String>,
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
    #[serde(default = "crate::fetched::default_inline_limit")]
    pub inline_limit: usize,
    /// Recently fetched payload bytes kept on this node, so that its worker
    /// groups fetch a stored payload once rather than once each.
    #[serde(default = "crate::fetched::default_blob_cache")]
    pub blob_cache: usize,
    /// How many stream positions one worker group of this node may run ahead
    /// of another that is still moving, so that bytes one group fetched are
    /// still in `blob_cache` when the others ask (0: each at its own speed).
    #[serde(default = "crate::pace::default_group_lead")]
    pub group_lead: u64,
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
impl JetStreamParams {
    /// Checks that need no server.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("servers: name at least one server URL".into());
        }
        crate::token::check_prefix(&self.prefix)?;
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
