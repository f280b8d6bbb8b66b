use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Schema version carried by every event (`v`); bumped on incompatible changes.
pub const WIRE_VERSION: u16 = 1;

fn wire_version() -> u16 {
    WIRE_VERSION
}

/// Where a payload came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Suricata,
    Zeek,
    Dir,
    Cli,
    Extracted,
    /// A kind written by a newer node; kept readable rather than rejected.
    #[serde(other)]
    Unknown,
}

impl SourceKind {
    /// Every kind this build writes.
    pub const KNOWN: [SourceKind; 5] = [
        SourceKind::Suricata,
        SourceKind::Zeek,
        SourceKind::Dir,
        SourceKind::Cli,
        SourceKind::Extracted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Suricata => "suricata",
            SourceKind::Zeek => "zeek",
            SourceKind::Dir => "dir",
            SourceKind::Cli => "cli",
            SourceKind::Extracted => "extracted",
            SourceKind::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub kind: SourceKind,
    /// The configured source (or node) name that saw the file.
    pub sensor: String,
    /// Path the file was read from, as data: never reopened by workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Network flow the file was carved from, when the sensor knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_proto: Option<String>,
}

/// What the sensor (or the source) knew about the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PayloadMeta {
    /// Filename as the sensor saw it: data, never a filesystem path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// Hashes reported by the sensor, by algorithm name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hashes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Flow>,
    /// App-layer fields (http host/uri/user agent, smtp…) and timestamps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    pub root_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub depth: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extracted_by: Option<String>,
    /// What this payload's own unpacking may still take from its tree's
    /// extraction limits (set on unpacked archives; roots use the config's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<TreeBudget>,
}

/// A share of one archive tree's extraction limits: every payload unpacked
/// from the tree counts against them, whichever process unpacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeBudget {
    pub children: u64,
    pub bytes: u64,
}

/// Where a payload's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobRef {
    /// Small payloads travel inside the event.
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Larger ones live in the transport's content-addressed store, keyed by sha256.
    Store(String),
    /// Or in an append-only log of the transport's (a RabbitMQ stream per
    /// publishing node), as `parts` messages from `offset` on, each with
    /// the sha256 `key` as its id.
    Log {
        log: String,
        key: String,
        offset: u64,
        parts: u32,
    },
}

/// One file to scan. Published once per ingestion; fanned out to every worker group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadEvent {
    #[serde(default = "wire_version")]
    pub v: u16,
    /// ULID, new per ingestion.
    pub id: String,
    pub sha256: String,
    pub size: u64,
    pub blob: BlobRef,
    pub source: SourceInfo,
    #[serde(default)]
    pub meta: PayloadMeta,
    pub lineage: Lineage,
    pub ingested_at: DateTime<Utc>,
    /// Stable across a source's restarts (e.g. path, size and mtime), so a
    /// republish of the same file is recognised as a duplicate by the transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_key: Option<String>,
    /// Set on a payload put up again by a replay: its results carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_id: Option<String>,
    /// On a replayed payload, the rules each worker group's earlier result
    /// listed (by group): its replay result then names what is new.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replay_previous: BTreeMap<String, Vec<String>>,
}

impl PayloadEvent {
    /// A root payload (not extracted from another) with a fresh id.
    pub fn new_root(sha256: String, size: u64, blob: BlobRef, source: SourceInfo) -> Self {
        let id = ulid::Ulid::generate().to_string();
        PayloadEvent {
            v: WIRE_VERSION,
            lineage: Lineage {
                root_id: id.clone(),
                parent_id: None,
                depth: 0,
                extracted_by: None,
                budget: None,
            },
            id,
            sha256,
            size,
            blob,
            source,
            meta: PayloadMeta::default(),
            ingested_at: Utc::now(),
            ingest_key: None,
            replay_id: None,
            replay_previous: BTreeMap::new(),
        }
    }

    /// The `index`-th file `worker` unpacked from this payload. Its id is
    /// derived from the parent's, so unpacking the parent again (after a
    /// redelivery) yields the same children and the same result ids.
    pub fn child(&self, index: usize, child: &crate::ChildPayload, worker: &str) -> Self {
        let name = &child.name;
        let sha256 = crate::sha256_hex(&child.data);
        let size = child.data.len() as u64;
        let id = format!("{}.{index}", self.id);
        let path = format!("{}!{name}", self.source.path.as_deref().unwrap_or(&self.id));
        let mut fields = BTreeMap::new();
        if let Some(parent) = &self.meta.filename {
            fields.insert(
                "parent_filename".to_owned(),
                serde_json::Value::from(parent.clone()),
            );
        }
        fields.insert(
            "parent_sha256".to_owned(),
            serde_json::Value::from(self.sha256.clone()),
        );
        PayloadEvent {
            v: WIRE_VERSION,
            ingest_key: Some(format!("child-{id}")),
            lineage: Lineage {
                root_id: self.lineage.root_id.clone(),
                parent_id: Some(self.id.clone()),
                depth: self.lineage.depth + 1,
                extracted_by: Some(worker.to_owned()),
                budget: child.budget,
            },
            id,
            blob: BlobRef::Store(sha256.clone()),
            sha256,
            size,
            source: SourceInfo {
                kind: SourceKind::Extracted,
                sensor: self.source.sensor.clone(),
                path: Some(path),
            },
            meta: PayloadMeta {
                filename: Some(name.to_owned()),
                mime: None,
                hashes: BTreeMap::new(),
                // Carried in the same flow as the archive.
                flow: self.meta.flow.clone(),
                fields,
            },
            ingested_at: Utc::now(),
            replay_id: None,
            replay_previous: BTreeMap::new(),
        }
    }

    /// The denormalised view of this payload that every result carries.
    pub fn summary(&self) -> PayloadSummary {
        PayloadSummary {
            id: self.id.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            filename: self.meta.filename.clone(),
            mime: self.meta.mime.clone(),
            source_kind: self.source.kind,
            sensor: self.source.sensor.clone(),
            path: self.source.path.clone(),
            flow: self.meta.flow.clone(),
            fields: self.meta.fields.clone(),
            root_id: self.lineage.root_id.clone(),
            depth: self.lineage.depth,
        }
    }
}

/// The payload fields copied into each result, so one document answers a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadSummary {
    pub id: String,
    pub sha256: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    pub source_kind: SourceKind,
    pub sensor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Flow>,
    /// The sensor's app-layer fields (http host, smtp sender, file state…),
    /// so analysts can search results by them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, serde_json::Value>,
    pub root_id: String,
    #[serde(default)]
    pub depth: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The worker group's name (its config table key).
    pub name: String,
    /// Version of the scanner implementation; part of the result id.
    pub version: String,
    /// Hash of the rules that produced this result, where rules apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ruleset: Option<String>,
}

impl WorkerInfo {
    /// A worker without rules (its `ruleset` is none).
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        WorkerInfo {
            name: name.into(),
            version: version.into(),
            ruleset: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeStatus {
    Ok,
    Error,
    Timeout,
    Skipped,
}

impl OutcomeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Ok => "ok",
            OutcomeStatus::Error => "error",
            OutcomeStatus::Timeout => "timeout",
            OutcomeStatus::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: OutcomeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Outcome {
    pub fn ok() -> Self {
        Outcome {
            status: OutcomeStatus::Ok,
            message: None,
        }
    }

    pub fn failed(status: OutcomeStatus, message: impl Into<String>) -> Self {
        Outcome {
            status,
            message: Some(message.into()),
        }
    }
}

/// What one worker found in one payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultEvent {
    #[serde(default = "wire_version")]
    pub v: u16,
    /// Deterministic: see [`result_id`].
    pub id: String,
    pub payload: PayloadSummary,
    pub worker: WorkerInfo,
    pub outcome: Outcome,
    /// The worker's findings, JSON-compatible.
    #[serde(default)]
    pub data: serde_json::Value,
    /// The rules or signatures that fired, whatever the worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<crate::RuleMatch>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_id: Option<String>,
    /// On a replay's result, when the payload's earlier result from the
    /// same group is known: the rules this one lists that it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_matches: Option<Vec<String>>,
    /// The result this one was copied from, for a payload whose content
    /// the same worker had scanned shortly before (no scan was run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<String>,
    /// The node that produced the result.
    #[serde(default)]
    pub node: String,
    /// The scanned payload's event, on results with matches only: worker
    /// groups that run on another group's matches (`filter.yara`) scan it
    /// from here. Connectors never store it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_event: Option<Box<PayloadEvent>>,
}

impl ResultEvent {
    pub fn new(
        payload: PayloadSummary,
        worker: WorkerInfo,
        outcome: Outcome,
        data: serde_json::Value,
        started_at: DateTime<Utc>,
        node: &str,
    ) -> Self {
        let id = result_id(&payload.id, &worker, None);
        let duration_ms = (Utc::now() - started_at).num_milliseconds().max(0) as u64;
        ResultEvent {
            v: WIRE_VERSION,
            id,
            payload,
            worker,
            outcome,
            data,
            matches: Vec::new(),
            started_at,
            duration_ms,
            replay_id: None,
            new_matches: None,
            cached_from: None,
            node: node.to_owned(),
            payload_event: None,
        }
    }
}

impl ResultEvent {
    /// This result as part of replay `replay` (if any): tagged with it, and
    /// with an id of its own, so it is stored beside the original.
    pub fn in_replay(mut self, replay: Option<&str>) -> Self {
        if let Some(replay) = replay {
            self.id = result_id(&self.payload.id, &self.worker, Some(replay));
            self.replay_id = Some(replay.to_owned());
        }
        self
    }

    /// This result as a datastore will take it after refusing it: same id
    /// (it takes the result's place), an `error` outcome saying why, no
    /// findings and none of the sensor's free-form fields.
    pub fn refused(&self, reason: &str) -> ResultEvent {
        const MAX_REASON: usize = 1024;
        let cut = reason.floor_char_boundary(MAX_REASON);
        let mut payload = self.payload.clone();
        payload.fields.clear();
        ResultEvent {
            payload,
            outcome: Outcome::failed(OutcomeStatus::Error, &reason[..cut]),
            data: serde_json::Value::Null,
            matches: Vec::new(),
            payload_event: None,
            ..self.clone()
        }
    }
}

/// The result id: a hash over what makes a result distinct, so that a
/// redelivered payload yields the same id and datastores upsert.
pub fn result_id(payload_id: &str, worker: &WorkerInfo, replay_id: Option<&str>) -> String {
    let mut h = Sha256::new();
    for part in [
        payload_id,
        &worker.name,
        &worker.version,
        worker.ruleset.as_deref().unwrap_or(""),
        replay_id.unwrap_or(""),
    ] {
        h.update(part.as_bytes());
        // A separator that cannot occur in the parts keeps ("ab","c") apart from ("a","bc").
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(ruleset: Option<&str>) -> WorkerInfo {
        WorkerInfo {
            name: "yara".into(),
            version: "1".into(),
            ruleset: ruleset.map(Into::into),
        }
    }

    #[test]
    fn result_id_is_deterministic_and_sensitive_to_each_part() {
        let base = result_id("01J", &worker(Some("r1")), None);
        assert_eq!(base, result_id("01J", &worker(Some("r1")), None));
        assert_eq!(base.len(), 32);
        assert_ne!(base, result_id("01K", &worker(Some("r1")), None));
        assert_ne!(base, result_id("01J", &worker(Some("r2")), None));
        assert_ne!(base, result_id("01J", &worker(None), None));
        assert_ne!(base, result_id("01J", &worker(Some("r1")), Some("replay")));
    }

    #[test]
    fn result_id_parts_do_not_run_together() {
        let a = WorkerInfo::new("ab", "c");
        let b = WorkerInfo::new("a", "bc");
        assert_ne!(result_id("x", &a, None), result_id("x", &b, None));
    }
}
