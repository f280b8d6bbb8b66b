//! Rescanning stored payloads: what a replay is, and the part of the
//! transport contract that starts, follows and cancels one. Nodes take a
//! replay's payloads through [`crate::Transport::replays`].

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use trawl_core::PayloadEvent;

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

impl ReplayRequest {
    /// A new replay of this request through `known` groups (the worker
    /// groups the transport has), in state `Starting`: every group named
    /// must be one of them, and without names it is all of them.
    pub fn starting(&self, known: &[String]) -> Result<ReplayRecord, TransportError> {
        let groups = if self.groups.is_empty() {
            known.to_vec()
        } else {
            self.groups.clone()
        };
        let listed = if known.is_empty() {
            "none yet".to_owned()
        } else {
            known.join(", ")
        };
        if let Some(unknown) = groups
            .iter()
            .find(|g| !known.contains(&crate::token::token(g)))
        {
            return Err(TransportError::Refused(format!(
                "no worker group {unknown:?} takes payloads here (groups: {listed})"
            )));
        }
        if groups.is_empty() {
            return Err(TransportError::Refused(
                "no worker group takes payloads here yet: start a scanner node first".into(),
            ));
        }
        Ok(ReplayRecord {
            id: ulid::Ulid::generate().to_string(),
            since: self.since,
            until: self.until,
            groups,
            sources: self.sources.clone(),
            total: 0,
            state: ReplayState::Starting,
            created_at: Utc::now(),
        })
    }

    /// Whether a stored payload event is one to rescan (its time aside).
    pub fn wants(&self, event: &PayloadEvent) -> bool {
        // A replayed payload is scanned in its own replay only.
        event.replay_id.is_none()
            && (self.sources.is_empty() || self.sources.contains(&event.source.sensor))
            && self
                .sha256
                .as_ref()
                .is_none_or(|set| set.contains(&event.sha256))
    }
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

/// The replays one worker group of a node takes part in, each with the
/// task that consumes it, as a node follows the stored records.
pub(crate) struct Joined {
    group: String,
    tasks: std::collections::HashMap<String, tokio::task::JoinHandle<()>>,
}

impl Joined {
    pub(crate) fn new(group: &str) -> Self {
        Joined {
            group: group.to_owned(),
            tasks: Default::default(),
        }
    }

    /// Follow the latest record of replay `key` (`None`: removed): join a
    /// running replay that names the group with `join`; the task of one
    /// that is no longer running is handed back, for the caller to stop.
    #[must_use]
    pub(crate) fn update(
        &mut self,
        key: &str,
        record: Option<&ReplayRecord>,
        join: impl FnOnce() -> tokio::task::JoinHandle<()>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.tasks.retain(|_, task| !task.is_finished());
        let wanted = record.is_some_and(|r| {
            r.state == ReplayState::Running && r.groups.iter().any(|g| g == &self.group)
        });
        match (wanted, self.tasks.remove(key)) {
            (true, Some(task)) => {
                self.tasks.insert(key.to_owned(), task);
                None
            }
            (true, None) => {
                tracing::info!(replay = %key, group = %self.group, "taking part in a replay");
                self.tasks.insert(key.to_owned(), join());
                None
            }
            (false, stopped) => stopped,
        }
    }
}
