//! Names on the broker, all under the prefix: an exchange per kind of
//! event, and a queue per consumer group named after the exchange it
//! reads (`trawl.payloads.worker-yara`, `trawl.results.connector-db`).

#[derive(Debug, Clone)]
pub(super) struct Names {
    /// Payload events (fanout: every worker group's queue gets each).
    pub(super) payloads: String,
    /// Result events (topic, routing key `<worker>.<status>`).
    pub(super) results: String,
    /// Set-aside messages: an exchange and the one queue bound to it.
    pub(super) dead: String,
}

impl Names {
    pub(super) fn new(prefix: &str) -> Self {
        Names {
            payloads: format!("{prefix}.payloads"),
            results: format!("{prefix}.results"),
            dead: format!("{prefix}.dead"),
        }
    }

    /// The queue of consumer group `consumer` (`worker-G`, `connector-N`) on `exchange`.
    pub(super) fn queue(exchange: &str, consumer: &str) -> String {
        format!("{exchange}.{consumer}")
    }
}
