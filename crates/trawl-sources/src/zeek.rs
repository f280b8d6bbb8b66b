//! Zeek's extracted files (`type = "zeek"`).
//!
//! Zeek writes `extract_files/extract-<ts>-<source>-<fuid>` in place and
//! closes it before `files.log` gets the file's line, so with `files_log`
//! set a file is complete when its line (joined by the `extracted` name)
//! appears, and the line is its metadata. Without a log, or for a file whose
//! line never comes within `metadata_wait`, a file is complete once it has
//! been quiet for `settle`.

use std::collections::{HashMap, HashSet};
use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};
use trawl_config::{Component, ConfigError, NonZeroDuration};
use trawl_core::SourceKind;

use crate::factory::SourceFactory;
use crate::tail::{FollowedLog, Line};
use crate::walk::WalkedFile;
use crate::watch::{
    file_key, line_key, Checkpoint, Layout, Occurrence, Settling, Watch, WatchParams,
};
use crate::Source;

mod parse;

use parse::{files_log_meta, name_meta, TsvHeader};

pub(crate) struct ZeekFactory;

struct Checked {
    watch: Watch,
    files_log: Option<PathBuf>,
    settle: Duration,
    wait: Duration,
}

/// `type = "zeek"`'s own keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZeekParams {
    /// files.log (TSV or JSON lines) to tail.
    files_log: Option<String>,
    /// Without `files_log`: the quiet period after which a file is complete.
    #[serde(default = "default_settle")]
    settle: NonZeroDuration,
    /// With `files_log`: how long a complete file waits for its line
    /// before it is published with what is known.
    #[serde(default = "default_metadata_wait")]
    metadata_wait: NonZeroDuration,
}

fn default_settle() -> NonZeroDuration {
    NonZeroDuration::from_secs(5)
}
fn default_metadata_wait() -> NonZeroDuration {
    NonZeroDuration::from_secs(600)
}

fn checked(config: &Component) -> Result<Checked, ConfigError> {
    let (shared, own): (_, ZeekParams) = WatchParams::split(config)?;
    Ok(Checked {
        files_log: own.files_log.as_deref().map(|f| config.resolve_path(f)),
        settle: own.settle.get(),
        wait: own.metadata_wait.get(),
        watch: Watch::check(config, &shared)?,
    })
}

impl SourceFactory for ZeekFactory {
    fn check(&self, config: &Component) -> Result<(), ConfigError> {
        checked(config).map(|_| ())
    }

    fn build(&self, config: &Component, data_dir: &Path) -> Result<Arc<dyn Source>, ConfigError> {
        let c = checked(config)?;
        let name = c.watch.name().to_owned();
        let root = c.watch.root().to_path_buf();
        let quiet = if c.files_log.is_some() {
            c.wait
        } else {
            c.settle
        };
        c.watch.build(config, data_dir, move || {
            Box::new(ZeekLayout {
                name: name.clone(),
                root: root.clone(),
                log: c
                    .files_log
                    .as_deref()
                    .map(|p| FollowedLog::new(p, "files_log")),
                header: None,
                quiet,
                settling: Settling::default(),
            })
        })
    }
}

struct ZeekLayout {
    name: String,
    root: PathBuf,
    log: Option<FollowedLog>,
    header: Option<TsvHeader>,
    /// How long an unlogged file must be quiet before it is published.
    quiet: Duration,
    settling: Settling,
}

impl Layout for ZeekLayout {
    fn kind(&self) -> SourceKind {
        SourceKind::Zeek
    }

    fn resume(&mut self, marks: &HashMap<String, String>) {
        let Some(log) = &mut self.log else {
            return;
        };
        if log.resume(marks) {
            // Resuming past the header: read it from the top of the file.
            let head = log.head(64 * 1024);
            for line in head
                .split(|&b| b == b'\n')
                .take_while(|l| l.starts_with(b"#"))
            {
                TsvHeader::update(&mut self.header, line);
            }
        }
    }

    fn ready(
        &mut self,
        listing: &[WalkedFile],
        done: &Checkpoint,
        now: Instant,
    ) -> Vec<Occurrence> {
        self.settling.retain(listing);
        let mut out = Vec::new();
        let mut logged = HashSet::new();
        for (line, record) in self.read_log() {
            let Some(name) = record.get("extracted").and_then(Value::as_str) else {
                continue;
            };
            if !is_plain_name(name) {
                tracing::warn!(source = %self.name, extracted = name, "files.log names a file outside the extract folder; line skipped");
                continue;
            }
            let path = self.root.join(name);
            if !logged.insert(path.clone()) {
                // Zeek ≥ 5.1 logs one line per connection of the same file.
                continue;
            }
            // Keyed like an unlogged file, so one published by the quiet
            // fallback is not published again when its line turns up. Stat
            // afresh: the listing may predate the file's last write.
            let key = match stat(&path) {
                Some(f) => file_key(&self.name, &f),
                None => line_key(&self.name, name.as_bytes()),
            };
            if done.contains(&key) {
                continue;
            }
            if let Some(log) = &mut self.log {
                log.hand_out(key.clone(), &line);
            }
            out.push(Occurrence {
                path,
                key,
                meta: files_log_meta(&record),
                companions: Vec::new(),
            });
        }
        for f in listing {
            if logged.contains(&f.path) {
                continue;
            }
            let key = file_key(&self.name, f);
            if !done.contains(&key) && self.settling.settled(f, now, self.quiet) {
                if self.log.is_some() {
                    tracing::warn!(source = %self.name, path = %f.path.display(), "no files.log line after the wait; publishing the file without it");
                }
                out.push(Occurrence {
                    path: f.path.clone(),
                    key,
                    meta: name_meta(&f.path),
                    companions: Vec::new(),
                });
            }
        }
        out
    }

    fn handled(&mut self, key: &str) {
        if let Some(log) = &mut self.log {
            log.handled(key);
        }
    }

    fn marks(&self) -> Vec<(String, String)> {
        self.log
            .as_ref()
            .map(FollowedLog::marks)
            .unwrap_or_default()
    }
}

fn stat(path: &Path) -> Option<WalkedFile> {
    let m = std::fs::metadata(path).ok()?;
    Some(WalkedFile {
        path: path.to_path_buf(),
        size: m.len(),
        modified: m.modified().ok()?,
    })
}

/// A log-provided name is data: only a plain name (or relative path without
/// `..`) may be joined to the extract folder.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, PathPart::Normal(_)))
}

impl ZeekLayout {
    /// New files.log records (TSV after its header, or JSON lines).
    fn read_log(&mut self) -> Vec<(Line, Map<String, Value>)> {
        let Some(log) = &mut self.log else {
            return Vec::new();
        };
        let lines = log.read_lines(&self.name);
        let mut out = Vec::new();
        for line in lines {
            if line.bytes.starts_with(b"#") {
                TsvHeader::update(&mut self.header, &line.bytes);
                continue;
            }
            let parsed = if line.bytes.starts_with(b"{") {
                serde_json::from_slice::<Map<String, Value>>(&line.bytes).map_err(|e| e.to_string())
            } else {
                match &self.header {
                    Some(h) => h.parse(&line.bytes),
                    None => Err("TSV line before any #fields header".into()),
                }
            };
            match parsed {
                Ok(record) => out.push((line, record)),
                Err(e) => {
                    tracing::warn!(source = %self.name, offset = line.start, error = %e, "malformed files.log line skipped");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
