//! What `trawl status` shows of RabbitMQ: every queue under the prefix,
//! with its depth, unacknowledged messages and consumers, as the broker's
//! management API reports them (AMQP itself tells neither the queues nor
//! what is unacknowledged).

use std::time::Duration;

use serde::Deserialize;

use std::collections::BTreeMap;

use super::link::unavailable;
use super::log::Start;
use super::params::RabbitParams;
use super::RabbitTransport;
use crate::{ConsumerStatus, GroupState, NodeState, StreamStatus, TransportError, TransportStatus};

/// How long the announcements stream keeps what nodes said.
pub(super) const ANNOUNCED_KEPT: Duration = Duration::from_secs(24 * 3600);
/// How far back `trawl status` reads them (as long as JetStream's nodes
/// bucket keeps an entry): a running node announces its counters every
/// 10 s and its groups every minute.
const ANNOUNCED_READ: Duration = Duration::from_secs(600);

/// One queue as `GET /api/queues/<vhost>` lists it.
#[derive(Debug, Deserialize)]
pub(super) struct QueueInfo {
    pub(super) name: String,
    #[serde(default)]
    messages: u64,
    #[serde(default)]
    messages_ready: u64,
    #[serde(default)]
    messages_unacknowledged: u64,
    #[serde(default)]
    message_bytes: u64,
    #[serde(default)]
    consumers: u64,
}

/// Where the management API is and how to log in to it.
pub(super) struct Management {
    url: String,
    user: String,
    password: String,
    vhost: String,
}

impl Management {
    /// The management API of the broker at `server` (the one this node
    /// is connected to), with its user and vhost.
    pub(super) fn from(params: &RabbitParams, server: &str) -> Result<Self, TransportError> {
        let server: lapin::uri::AMQPUri = server
            .parse()
            .map_err(|e| TransportError::Refused(format!("servers: {e}")))?;
        let info = &server.authority.userinfo;
        let url = match &params.management {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}:15672", server.authority.host),
        };
        Ok(Management {
            url,
            user: info.username.clone(),
            password: info.password.clone(),
            vhost: server.vhost,
        })
    }

    pub(super) async fn queues(&self) -> Result<Vec<QueueInfo>, TransportError> {
        let vhost: String = url::form_urlencoded::byte_serialize(self.vhost.as_bytes()).collect();
        let url = format!(
            "{}/api/queues/{vhost}?columns=name,messages,messages_ready,messages_unacknowledged,message_bytes,consumers",
            self.url
        );
        let what = format!(
            "RabbitMQ management API at {} (enable the rabbitmq_management plugin, or set `management`)",
            self.url
        );
        let response = reqwest::Client::new()
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| unavailable(&what, e))?;
        let response = response
            .error_for_status()
            .map_err(|e| unavailable(&what, e))?;
        response.json().await.map_err(|e| unavailable(&what, e))
    }
}

impl RabbitTransport {
    pub(super) fn management(&self) -> Result<Management, TransportError> {
        Management::from(&self.inner.params, self.inner.link.server())
    }

    /// Each exchange with the queues that read it (the exchange's row sums
    /// its queues, and each queue is a consumer group's row), then the
    /// replay logs.
    pub async fn status(&self) -> Result<TransportStatus, TransportError> {
        let queues = self.management()?.queues().await?;
        let n = &self.inner.names;
        let streams = [
            &n.payloads,
            &n.results,
            &n.dead,
            &n.payload_log,
            &n.result_log,
        ]
        .into_iter()
        .map(|exchange| exchange_status(exchange, &queues))
        .collect();
        let (groups, nodes) = match self.announced().await {
            Ok(announced) => announced,
            Err(e) => {
                tracing::debug!(error = %e, "no announcements to read");
                Default::default()
            }
        };
        Ok(TransportStatus {
            streams,
            groups,
            nodes,
        })
    }

    /// Tell `trawl status` what this node (or a group of it) is doing.
    pub(super) async fn announce(
        &self,
        state: &impl serde::Serialize,
    ) -> Result<(), TransportError> {
        let body = serde_json::to_vec(state).expect("an announcement serialises");
        self.append(&self.inner.names.announced, &body, None).await
    }

    /// The last thing each node and each group said within [`ANNOUNCED_READ`].
    async fn announced(&self) -> Result<(Vec<GroupState>, Vec<NodeState>), TransportError> {
        let since = chrono::Utc::now() - ANNOUNCED_READ;
        let mut reader = self
            .read_stream(&self.inner.names.announced, Start::Time(since))
            .await?;
        let mut groups = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        while let Some(m) = reader.next().await? {
            // A group's state names its group; a node's does not.
            if let Ok(g) = serde_json::from_slice::<GroupState>(&m.data) {
                groups.insert((g.node.clone(), g.group.clone()), g);
            } else if let Ok(n) = serde_json::from_slice::<NodeState>(&m.data) {
                nodes.insert(n.node.clone(), n);
            }
        }
        Ok((
            groups.into_values().collect(),
            nodes.into_values().collect(),
        ))
    }
}

fn exchange_status(exchange: &str, queues: &[QueueInfo]) -> StreamStatus {
    let mut status = StreamStatus {
        name: exchange.to_owned(),
        messages: 0,
        bytes: 0,
        first: None,
        last: None,
        consumers: Vec::new(),
    };
    let group_prefix = format!("{exchange}.");
    for q in queues {
        let group = q.name.strip_prefix(&group_prefix);
        if q.name != exchange && group.is_none() {
            continue;
        }
        status.messages += q.messages;
        status.bytes += q.message_bytes;
        if let Some(group) = group {
            status.consumers.push(ConsumerStatus {
                name: group.to_owned(),
                pending: q.messages_ready,
                ack_pending: usize::try_from(q.messages_unacknowledged).unwrap_or(usize::MAX),
                redelivered: 0,
                members: Some(q.consumers),
            });
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_grouped_under_the_exchange_they_read() {
        let q = |name: &str, ready, unacked| QueueInfo {
            name: name.into(),
            messages: ready + unacked,
            messages_ready: ready,
            messages_unacknowledged: unacked,
            message_bytes: 10,
            consumers: 2,
        };
        let queues = [
            q("trawl.payloads.worker-yara", 5, 2),
            q("trawl.payloads.worker-hash", 1, 0),
            q("trawl.results.connector-db", 3, 0),
            q("trawl.dead", 4, 0),
            q("other.payloads.worker-yara", 9, 9),
        ];
        let payloads = exchange_status("trawl.payloads", &queues);
        assert_eq!(payloads.messages, 8);
        let names: Vec<_> = payloads.consumers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["worker-yara", "worker-hash"]);
        assert_eq!(payloads.consumers[0].ack_pending, 2);
        assert_eq!(payloads.consumers[0].members, Some(2));
        let dead = exchange_status("trawl.dead", &queues);
        assert_eq!((dead.messages, dead.consumers.len()), (4, 0));
    }
}
