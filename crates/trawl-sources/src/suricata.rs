//! Suricata's file-store (`type = "suricata"`).
//!
//! v2 (Suricata 4.1+): bytes are written under `tmp/` and renamed to
//! `XX/<sha256>`, so a file there is complete. Each sighting of a file is one
//! occurrence: a `<sha256>.<secs>.<id>.json` sidecar, or an eve.json
//! `fileinfo` event with `"stored":true` when `eve` is set. A repeat of the
//! same bytes keeps one data file and adds a sidecar / event, so it is a new
//! payload event whose bytes the transport already holds. A data file with
//! no sidecar or event after `metadata_wait` is published with what is known.
//!
//! v1 (Suricata ≤ 5.0): `file.N` with `file.N.meta`; the meta file's
//! closing `SIZE:` line says the file is complete.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};
use trawl_config::{Component, ConfigError, NonZeroDuration};
use trawl_core::{PayloadMeta, SourceKind};

use crate::factory::SourceFactory;
use crate::tail::FollowedLog;
use crate::walk::WalkedFile;
use crate::watch::{
    file_key, line_key, Checkpoint, Layout, Occurrence, Settling, Watch, WatchParams,
};
use crate::Source;

mod parse;

use parse::{fileinfo_meta, is_sha256, sidecar_sha, v1_meta};

pub(crate) struct SuricataFactory;

#[derive(Clone, Copy, PartialEq)]
enum Version {
    V1,
    V2,
}

/// `type = "suricata"`'s own keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuricataParams {
    /// `v2` (filestore/XX/<sha256>) or `v1` (file.N + file.N.meta).
    filestore: Option<String>,
    /// eve.json to tail for `fileinfo` events.
    eve: Option<String>,
    /// How long a complete file waits for its metadata before it is
    /// published with what is known.
    #[serde(default = "default_metadata_wait")]
    metadata_wait: NonZeroDuration,
}

fn default_metadata_wait() -> NonZeroDuration {
    NonZeroDuration::from_secs(30)
}

fn checked(config: &Component) -> Result<(Watch, Version, Option<PathBuf>, Duration), ConfigError> {
    let (shared, p): (_, SuricataParams) = WatchParams::split(config)?;
    let version = match p.filestore.as_deref().unwrap_or("v2") {
        "v2" | "2" => Version::V2,
        "v1" | "1" => Version::V1,
        other => {
            return Err(config.error(format_args!(
                "filestore: expected \"v2\" or \"v1\", found {other:?}"
            )))
        }
    };
    if version == Version::V1 && p.eve.is_some() {
        return Err(config.error(
            "eve: only with filestore = \"v2\" (v1 files are not named by their sha256; their .meta files carry the metadata)",
        ));
    }
    let eve = p.eve.as_deref().map(|e| config.resolve_path(e));
    Ok((
        Watch::check(config, &shared)?,
        version,
        eve,
        p.metadata_wait.get(),
    ))
}

impl SourceFactory for SuricataFactory {
    fn check(&self, config: &Component) -> Result<(), ConfigError> {
        checked(config).map(|_| ())
    }

    fn build(&self, config: &Component, data_dir: &Path) -> Result<Arc<dyn Source>, ConfigError> {
        let (watch, version, eve, wait) = checked(config)?;
        let name = watch.name().to_owned();
        let root = watch.root().to_path_buf();
        watch.build(config, data_dir, move || {
            Box::new(SuricataLayout {
                name: name.clone(),
                root: root.clone(),
                version,
                eve: eve.as_deref().map(|p| FollowedLog::new(p, "eve")),
                wait,
                waiting: Settling::default(),
            })
        })
    }
}

struct SuricataLayout {
    name: String,
    root: PathBuf,
    version: Version,
    eve: Option<FollowedLog>,
    wait: Duration,
    /// Data files with no metadata yet, since when.
    waiting: Settling,
}

impl Layout for SuricataLayout {
    fn kind(&self) -> SourceKind {
        SourceKind::Suricata
    }

    fn resume(&mut self, marks: &HashMap<String, String>) {
        if let Some(eve) = &mut self.eve {
            eve.resume(marks);
        }
    }

    fn ready(
        &mut self,
        listing: &[WalkedFile],
        done: &Checkpoint,
        now: Instant,
    ) -> Vec<Occurrence> {
        match self.version {
            Version::V2 => self.ready_v2(listing, done, now),
            Version::V1 => self.ready_v1(listing, done, now),
        }
    }

    fn handled(&mut self, key: &str) {
        if let Some(eve) = &mut self.eve {
            eve.handled(key);
        }
    }

    fn marks(&self) -> Vec<(String, String)> {
        self.eve
            .as_ref()
            .map(FollowedLog::marks)
            .unwrap_or_default()
    }
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

impl SuricataLayout {
    fn data_path(&self, sha: &str) -> PathBuf {
        self.root.join(&sha[..2]).join(sha)
    }

    /// In a leaf dir `XX/` (not `tmp/`), named as v2 names files.
    fn in_leaf(&self, path: &Path) -> bool {
        path.parent()
            .and_then(|p| p.strip_prefix(&self.root).ok())
            .and_then(Path::to_str)
            .is_some_and(|d| d.len() == 2 && d.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    fn ready_v2(
        &mut self,
        listing: &[WalkedFile],
        done: &Checkpoint,
        now: Instant,
    ) -> Vec<Occurrence> {
        let mut out = Vec::new();
        let mut sidecars: HashMap<&str, Vec<&WalkedFile>> = HashMap::new();
        let mut data = Vec::new();
        for f in listing.iter().filter(|f| self.in_leaf(&f.path)) {
            let name = file_name(&f.path);
            if let Some(sha) = sidecar_sha(name) {
                sidecars.entry(sha).or_default().push(f);
            } else if is_sha256(name) {
                data.push(f);
            }
        }
        let mut described: HashSet<PathBuf> = HashSet::new();
        if self.eve.is_some() {
            for occ in self.read_eve(done) {
                described.insert(occ.path.clone());
                out.push(occ);
            }
            // Sidecars follow their data file's `after`.
            for occ in &mut out {
                if let Some(list) = sidecars.get(file_name(&occ.path)) {
                    occ.companions = list.iter().map(|f| f.path.clone()).collect();
                }
            }
        } else {
            for (sha, list) in &sidecars {
                let data_path = self.data_path(sha);
                described.insert(data_path.clone());
                for side in list {
                    let key = file_key(&self.name, side);
                    if done.contains(&key) {
                        continue;
                    }
                    // Written in place: whole once it parses at the size it was
                    // listed with (the key), or given up on after the wait.
                    let meta = match read_record(side) {
                        Ok(record) => fileinfo_meta(&record),
                        Err(e) if self.waiting.settled(side, now, self.wait) => {
                            tracing::warn!(source = %self.name, sidecar = %side.path.display(), error = %e, "malformed sidecar; publishing the file with what is known");
                            PayloadMeta::default()
                        }
                        Err(_) => continue,
                    };
                    out.push(Occurrence {
                        path: data_path.clone(),
                        key,
                        meta,
                        companions: vec![side.path.clone()],
                    });
                }
            }
        }
        out.extend(self.undescribed(&data, &described, done, now));
        self.waiting.retain(listing);
        out
    }

    /// Data files no sidecar, event or earlier occurrence speaks for, once
    /// they have waited `metadata_wait` for one.
    fn undescribed(
        &mut self,
        data: &[&WalkedFile],
        described: &HashSet<PathBuf>,
        done: &Checkpoint,
        now: Instant,
    ) -> Vec<Occurrence> {
        data.iter()
            .filter(|f| !described.contains(&f.path) && !done.has_path(&f.path))
            .filter(|f| self.waiting.settled(f, now, self.wait))
            .map(|f| {
                tracing::info!(source = %self.name, path = %f.path.display(), "no metadata after the wait; publishing the file without it");
                Occurrence {
                    path: f.path.clone(),
                    key: file_key(&self.name, f),
                    meta: PayloadMeta::default(),
                    companions: Vec::new(),
                }
            })
            .collect()
    }

    /// New `fileinfo` events of stored files, one occurrence each.
    fn read_eve(&mut self, done: &Checkpoint) -> Vec<Occurrence> {
        let Some(eve) = &mut self.eve else {
            return Vec::new();
        };
        let lines = eve.read_lines(&self.name);
        let mut out = Vec::new();
        for line in lines {
            // Most of eve.json is other event types: skip them unparsed.
            if !contains(&line.bytes, b"fileinfo") {
                continue;
            }
            let record: Map<String, Value> = match serde_json::from_slice(&line.bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(source = %self.name, offset = line.start, error = %e, "malformed eve.json line skipped");
                    continue;
                }
            };
            if record.get("event_type").and_then(Value::as_str) != Some("fileinfo") {
                continue;
            }
            let info = record.get("fileinfo");
            let stored = info.and_then(|i| i.get("stored")).and_then(Value::as_bool);
            let sha = info.and_then(|i| i.get("sha256")).and_then(Value::as_str);
            let Some(sha) = sha.filter(|s| stored == Some(true) && is_sha256(s)) else {
                continue;
            };
            let key = line_key(&self.name, &line.bytes);
            if done.contains(&key) {
                continue;
            }
            eve.hand_out(key.clone(), &line);
            out.push(Occurrence {
                path: self.root.join(&sha[..2]).join(sha),
                key,
                meta: fileinfo_meta(&record),
                companions: Vec::new(),
            });
        }
        out
    }

    fn ready_v1(
        &mut self,
        listing: &[WalkedFile],
        done: &Checkpoint,
        now: Instant,
    ) -> Vec<Occurrence> {
        let mut out = Vec::new();
        let mut described = HashSet::new();
        let mut data = Vec::new();
        for f in listing {
            let name = file_name(&f.path);
            if !name.starts_with("file.") || name.ends_with(".tmp") {
                continue;
            }
            let Some(data_name) = name.strip_suffix(".meta") else {
                data.push(f);
                continue;
            };
            let data_path = f.path.with_file_name(data_name);
            described.insert(data_path.clone());
            let key = file_key(&self.name, f);
            if done.contains(&key) {
                continue;
            }
            let text = match read_as_listed(f) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(_) => continue,
            };
            // Up to 4.0 the meta file is written in place; SIZE comes last.
            let complete = text.lines().any(|l| l.starts_with("SIZE:"));
            if !complete && !self.waiting.settled(f, now, self.wait) {
                continue;
            }
            if !complete {
                tracing::warn!(source = %self.name, meta = %f.path.display(), "meta file never completed; publishing the file with what it says");
            }
            out.push(Occurrence {
                path: data_path,
                key,
                meta: v1_meta(&text),
                companions: vec![f.path.clone()],
            });
        }
        out.extend(self.undescribed(&data, &described, done, now));
        self.waiting.retain(listing);
        out
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A file's bytes, if it still has the size it was listed with.
fn read_as_listed(file: &WalkedFile) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(&file.path).map_err(|e| e.to_string())?;
    if bytes.len() as u64 != file.size {
        return Err("still being written".into());
    }
    Ok(bytes)
}

fn read_record(file: &WalkedFile) -> Result<Map<String, Value>, String> {
    serde_json::from_slice(&read_as_listed(file)?).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
