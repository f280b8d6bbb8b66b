//! Zeek's extracted files (`type = "zeek"`).
//!
//! Zeek writes `extract_files/extract-<ts>-<source>-<fuid>` in place and
//! closes it before `files.log` gets the file's line, so with `files_log`
//! set a file is complete when its line (joined by the `extracted` name)
//! appears, and the line is its metadata. Without a log, or for a file whose
//! line never comes within `metadata_wait`, a file is complete once it has
//! been quiet for `settle`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};
use trawl_config::{Component, ConfigError, NonZeroDuration};
use trawl_core::{Flow, PayloadMeta, SourceKind};

use crate::factory::SourceFactory;
use crate::tail::{FollowedLog, Line};
use crate::walk::WalkedFile;
use crate::watch::{
    file_key, line_key, Checkpoint, Layout, Occurrence, Settling, Watch, WatchParams,
};
use crate::Source;

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

/// Zeek's TSV conventions, from the `#` lines at the top of a log.
#[derive(Debug, Clone)]
struct TsvHeader {
    separator: u8,
    set_separator: u8,
    empty: Vec<u8>,
    unset: Vec<u8>,
    fields: Vec<String>,
    types: Vec<String>,
}

impl Default for TsvHeader {
    fn default() -> Self {
        TsvHeader {
            separator: b'\t',
            set_separator: b',',
            empty: b"(empty)".to_vec(),
            unset: b"-".to_vec(),
            fields: Vec::new(),
            types: Vec::new(),
        }
    }
}

impl TsvHeader {
    fn update(header: &mut Option<TsvHeader>, line: &[u8]) {
        let h = header.get_or_insert_with(TsvHeader::default);
        // `#separator \x09` uses a space; the others use the separator itself.
        if let Some(v) = line.strip_prefix(b"#separator ") {
            if let Some(&b) = unescape(v).first() {
                h.separator = b;
            }
            return;
        }
        let mut parts = line.split(|&b| b == h.separator);
        let tag = parts.next().unwrap_or_default();
        let values: Vec<Vec<u8>> = parts.map(unescape).collect();
        let text = |v: &[Vec<u8>]| -> Vec<String> {
            v.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        };
        match tag {
            b"#set_separator" => {
                h.set_separator = values
                    .first()
                    .and_then(|v| v.first().copied())
                    .unwrap_or(b',')
            }
            b"#empty_field" => h.empty = values.into_iter().next().unwrap_or_default(),
            b"#unset_field" => h.unset = values.into_iter().next().unwrap_or_default(),
            b"#fields" => h.fields = text(&values),
            b"#types" => h.types = text(&values),
            _ => {}
        }
    }

    fn parse(&self, line: &[u8]) -> Result<Map<String, Value>, String> {
        if self.fields.is_empty() {
            return Err("TSV line before any #fields header".into());
        }
        let values: Vec<&[u8]> = line.split(|&b| b == self.separator).collect();
        if values.len() != self.fields.len() {
            return Err(format!(
                "{} values for {} #fields",
                values.len(),
                self.fields.len()
            ));
        }
        let mut out = Map::new();
        for (i, (field, raw)) in self.fields.iter().zip(values).enumerate() {
            if raw == self.unset.as_slice() {
                continue;
            }
            let ty = self.types.get(i).map(String::as_str).unwrap_or("string");
            out.insert(field.clone(), self.value(ty, raw));
        }
        Ok(out)
    }

    fn value(&self, ty: &str, raw: &[u8]) -> Value {
        let text = |b: &[u8]| String::from_utf8_lossy(&unescape(b)).into_owned();
        if ty.starts_with("set[") || ty.starts_with("vector[") {
            if raw == self.empty.as_slice() {
                return Value::Array(Vec::new());
            }
            return raw
                .split(|&b| b == self.set_separator)
                .map(|item| Value::from(text(item)))
                .collect();
        }
        if raw == self.empty.as_slice() {
            return Value::from("");
        }
        let t = text(raw);
        let parsed = match ty {
            "count" | "port" => t.parse::<u64>().ok().map(Value::from),
            "int" => t.parse::<i64>().ok().map(Value::from),
            "double" | "time" | "interval" => t.parse::<f64>().ok().map(Value::from),
            "bool" => match t.as_str() {
                "T" => Some(Value::Bool(true)),
                "F" => Some(Value::Bool(false)),
                _ => None,
            },
            _ => None,
        };
        parsed.unwrap_or(Value::String(t))
    }
}

/// Zeek's escapes: `\xHH` for bytes and `\\` for a backslash.
fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' {
            if raw.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if raw.get(i + 1) == Some(&b'x') {
                if let Some(b) = raw
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

/// Zeek's source names as Suricata spells app protocols (`FTP_DATA` → `ftp-data`).
fn app_proto(source: &str) -> String {
    source.to_ascii_lowercase().replace('_', "-")
}

/// The payload metadata of a files.log record. `is_orig = F` means the
/// responder sent the file, so the flow's source is the sender.
fn files_log_meta(record: &Map<String, Value>) -> PayloadMeta {
    let s = |k: &str| crate::record::text(record, k);
    let port = |k: &str| crate::record::port(record, k);
    let from_orig = record
        .get("is_orig")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (src, dst) = if from_orig {
        ("orig", "resp")
    } else {
        ("resp", "orig")
    };
    let flow = Flow {
        src_ip: s(&format!("id.{src}_h")),
        src_port: port(&format!("id.{src}_p")),
        dest_ip: s(&format!("id.{dst}_h")),
        dest_port: port(&format!("id.{dst}_p")),
        proto: None,
        app_proto: s("source").map(|p| app_proto(&p)),
    };
    let hashes = ["md5", "sha1", "sha256"]
        .into_iter()
        .filter_map(|h| s(h).map(|v| (h.to_owned(), v)))
        .collect();
    let taken = ["filename", "mime_type", "md5", "sha1", "sha256"];
    let fields: BTreeMap<String, Value> = record
        .iter()
        .filter(|(k, _)| !k.starts_with("id.") && !taken.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    PayloadMeta {
        filename: s("filename"),
        mime: s("mime_type"),
        hashes,
        flow: (flow != Flow::default()).then_some(flow),
        fields,
    }
}

/// What Zeek's default name `extract-<ts>-<source>-<fuid>` tells about an unlogged file.
fn name_meta(path: &Path) -> PayloadMeta {
    let mut meta = PayloadMeta::default();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some(rest) = name.strip_prefix("extract-") else {
        return meta;
    };
    let mut parts = rest.rsplitn(2, '-');
    let (Some(fuid), Some(rest)) = (parts.next(), parts.next()) else {
        return meta;
    };
    let Some((ts, source)) = rest.split_once('-') else {
        return meta;
    };
    if ts.parse::<f64>().is_err() || !fuid.starts_with('F') {
        return meta;
    }
    meta.fields.insert("fuid".into(), Value::from(fuid));
    meta.fields.insert("source".into(), Value::from(source));
    meta.flow = Some(Flow {
        app_proto: Some(app_proto(source)),
        ..Flow::default()
    });
    meta
}

#[cfg(test)]
mod tests;
