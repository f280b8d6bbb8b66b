//! Rescanning stored payloads: what a replay is, and the part of the
//! transport contract that starts, follows and cancels one. Nodes take a
//! replay's payloads through [`crate::Transport::replays`].

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::TransportError;

/// What to rescan.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// Payloads first stored in `[since, until]`.
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Worker groups to scan them again; empty: every group on the stream.
    pub groups: Vec<String>,
    /// Only payloads these sources (sensor names) published; empty: all.
    pub sources: Vec<String>,
    /// Only payloads with these sha256s.
    pub sha256: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayState {
    /// Its payloads are being put up; nodes do not take it yet.
    Starting,
    Running,
    Done,
    Cancelled,
}

impl ReplayState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayState::Starting => "starting",
            ReplayState::Running => "running",
            ReplayState::Done => "done",
            ReplayState::Cancelled => "cancelled",
        }
    }
}

/// A replay as it is stored, durable beside the payloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayRecord {
    /// A ULID: results of the replay carry it.
    pub id: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub groups: Vec<String>,
    #[serde(default)]
    pub sources: Vec<String>,
    /// Payloads put up, each scanned once by every group.
    pub total: u64,
    pub state: ReplayState,
    pub created_at: DateTime<Utc>,
}

/// How far one replay has come.
#[derive(Debug, Clone)]
pub struct ReplayProgress {
    pub record: ReplayRecord,
    /// Scans finished, over all groups (`total` × groups when complete).
    pub done: u64,
    /// Replay results with an `error` or `timeout` outcome.
    pub errors: u64,
}

impl ReplayProgress {
    /// Scans the replay asks for.
    pub fn scans(&self) -> u64 {
        self.record.total * self.record.groups.len() as u64
    }

    pub fn complete(&self) -> bool {
        self.record.state == ReplayState::Done
            || (self.record.state == ReplayState::Running && self.done >= self.scans())
    }
}

/// Starting and following replays, for transports that keep payloads.
#[async_trait]
pub trait Replays: Send + Sync {
    /// Worker groups that take payloads from the stream.
    async fn groups(&self) -> Result<Vec<String>, TransportError>;

    /// Put the payloads the request names up for rescanning, durably, and
    /// return the running replay.
    async fn start(&self, request: &ReplayRequest) -> Result<ReplayRecord, TransportError>;

    /// `id`'s progress; `TransportError::Refused` if there is no such replay.
    async fn progress(&self, id: &str) -> Result<ReplayProgress, TransportError>;

    /// Every replay still stored, oldest first.
    async fn list(&self) -> Result<Vec<ReplayProgress>, TransportError>;

    /// Stop a replay: nodes take none of its payloads from now on.
    async fn cancel(&self, id: &str) -> Result<ReplayProgress, TransportError>;

    /// Payloads whose replay result lists a rule their earlier result (same
    /// group, no replay) did not.
    async fn new_matches(&self, id: &str) -> Result<u64, TransportError>;
}
