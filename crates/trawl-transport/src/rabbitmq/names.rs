//! Names on the broker, all under the prefix: an exchange per kind of
//! event, and a queue per consumer group named after the exchange it
//! reads (`trawl.payloads.worker-yara`, `trawl.results.connector-db`,
//! `trawl.replay.<id>.worker-yara`), stream queues under `trawl.log`, and
//! each publishing node's payload bytes in `trawl.blobs.<node>`.

#[derive(Debug, Clone)]
pub(super) struct Names {
    /// Payload events (fanout: every worker group's queue gets each).
    pub(super) payloads: String,
    /// Result events (topic, routing key `<worker>.<status>`).
    pub(super) results: String,
    /// Set-aside messages: an exchange and the one queue bound to it.
    pub(super) dead: String,
    /// Stream queues that keep every payload event and every result for
    /// `max_age`, read by `trawl replay`, and the replays themselves.
    pub(super) payload_log: String,
    pub(super) result_log: String,
    pub(super) replays: String,
    /// What nodes announce of themselves and their groups, for `trawl status`.
    pub(super) announced: String,
    prefix: String,
}

impl Names {
    pub(super) fn new(prefix: &str) -> Self {
        Names {
            payloads: format!("{prefix}.payloads"),
            results: format!("{prefix}.results"),
            dead: format!("{prefix}.dead"),
            payload_log: format!("{prefix}.log.payloads"),
            result_log: format!("{prefix}.log.results"),
            replays: format!("{prefix}.log.replays"),
            announced: format!("{prefix}.log.nodes"),
            prefix: prefix.to_owned(),
        }
    }

    /// The stream a node stores its larger payloads' bytes in (`log` is
    /// a name token).
    pub(super) fn blob_log(&self, log: &str) -> String {
        format!("{}.blobs.{log}", self.prefix)
    }

    /// The exchange a replay's payload events are put up on.
    pub(super) fn replay_exchange(&self, id: &str) -> String {
        format!("{}.replay.{}", self.prefix, crate::token::token(id))
    }

    /// The queue of consumer group `consumer` (`worker-G`, `connector-N`) on `exchange`.
    pub(super) fn queue(exchange: &str, consumer: &str) -> String {
        format!("{exchange}.{consumer}")
    }
}
