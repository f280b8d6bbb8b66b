//! `[transport] type = "rabbitmq"`: its keys and the checks that need no broker.

use std::path::PathBuf;

use serde::Deserialize;
use trawl_config::NonZeroDuration;

/// The broker's own ceiling on `max_message_size` (RabbitMQ 3.x).
const BROKER_CEILING: usize = 512 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitParams {
    /// One or more broker URLs, `amqp://user:pass@host:5672/vhost` or
    /// `amqps://…`, tried in turn (failover).
    pub servers: Vec<String>,
    /// Prefix of exchange and queue names (`trawl.payloads`, `trawl.worker.yara`).
    #[serde(default = "crate::token::default_prefix")]
    pub prefix: String,
    /// CA certificate (PEM) that signed the broker's; `amqps://` URLs.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that ask for one.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The broker's management API, for `trawl status` (default: the first
    /// server's host, port 15672, with its user and password).
    #[serde(default)]
    pub management: Option<String>,
    /// Largest message the broker accepts (its `max_message_size`, 128 MiB
    /// unless raised, at most 512 MiB). Larger payloads go in parts.
    #[serde(default = "default_max_message")]
    pub max_message: usize,
    /// Payloads up to this size travel inside their event (to every group's
    /// queue); larger ones are stored once, in the publishing node's blob
    /// stream, and read once per scanning node.
    #[serde(default = "crate::fetched::default_inline_limit")]
    pub inline_limit: usize,
    /// Recently read payload bytes kept on this node, so that its worker
    /// groups read a stored payload once rather than once each.
    #[serde(default = "crate::fetched::default_blob_cache")]
    pub blob_cache: usize,
    /// How many blob-stream offsets one worker group of this node may run
    /// ahead of another that is still moving, so that bytes one group read
    /// are still in `blob_cache` when the others ask (0: each at its own speed).
    #[serde(default = "crate::pace::default_group_lead")]
    pub group_lead: u64,
    /// How long payload events, their bytes and results stay in the
    /// streams (the first node to start sets it on the broker).
    #[serde(default = "default_max_age")]
    pub max_age: NonZeroDuration,
    /// Size cap of each stream (bytes; 0: none); the oldest go first.
    #[serde(default)]
    pub max_bytes: u64,
}

fn default_max_age() -> NonZeroDuration {
    NonZeroDuration::from_secs(7 * 24 * 3600)
}

fn default_max_message() -> usize {
    128 * 1024 * 1024
}

impl RabbitParams {
    /// Checks that need no broker.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("servers: name at least one broker URL".into());
        }
        for server in &self.servers {
            let uri: lapin::uri::AMQPUri = server
                .parse()
                .map_err(|e| format!("servers: {:?} is not an AMQP URL: {e}", redact(server)))?;
            if uri.scheme == lapin::uri::AMQPScheme::AMQP && self.tls_ca.is_some() {
                return Err(format!(
                    "servers: {:?} is plain amqp:// but tls_ca is set: write amqps://",
                    redact(server)
                ));
            }
        }
        crate::token::check_prefix(&self.prefix)?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key go together".into());
        }
        if self.max_message < 64 * 1024 || self.max_message > BROKER_CEILING {
            return Err(format!(
                "max_message: {} must be between 64 KiB and the broker's ceiling of 512 MiB",
                self.max_message
            ));
        }
        if self.inline_limit > self.max_message / 2 {
            return Err(format!(
                "inline_limit: {} leaves no room for the event in a max_message of {}",
                self.inline_limit, self.max_message
            ));
        }
        Ok(())
    }
}

/// A broker URL with its password hidden, for messages and logs.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("amqp://trawl:s3cret@10.0.0.1:5672/%2f"),
            "amqp://trawl:***@10.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://10.0.0.1"), "amqp://10.0.0.1");
    }
}
