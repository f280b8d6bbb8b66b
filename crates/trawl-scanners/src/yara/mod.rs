//! YARA: rules compiled once per ruleset, by YARA-X or libyara
//! (`engine`), and shared by every scan slot; each scan sets that
//! payload's externals.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use trawl_config::{BuildError, ConfigError, WorkerConfig};
use trawl_core::{Reload, RuleMatch, ScanError, ScanInput, ScanOutput, Scanner, WorkerInfo};

use crate::factory::ScannerFactory;

mod libyara;
mod rules;
mod yarax;

pub use rules::{
    compile, compile_with, rule_files, CompiledRules, Engine, EngineChoice, RulesError,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YaraParams {
    /// A rules file, or a folder searched recursively for `*.yar` / `*.yara`.
    rules: String,
    /// `auto` (YARA-X where the rules compile there), `yara-x` or `libyara`.
    #[serde(default)]
    engine: EngineChoice,
    /// Fast mode: report each string's first match only.
    #[serde(default)]
    fast: bool,
    /// Matched strings reported per rule.
    #[serde(default = "default_max_strings")]
    max_strings: usize,
    /// Bytes of each matched string reported.
    #[serde(default = "default_max_match_bytes")]
    max_match_bytes: usize,
}

fn default_max_strings() -> usize {
    32
}

fn default_max_match_bytes() -> usize {
    64
}

/// What a scan sets beside the bytes.
pub(super) struct Settings<'a> {
    pub(super) externals: [(&'static str, &'a str); 4],
    pub(super) timeout: Duration,
    pub(super) fast: bool,
}

/// The rules a scan matched, in the shape both engines report.
pub(super) struct Hits {
    max_strings: usize,
    max_match_bytes: usize,
    reports: Vec<Value>,
    matches: Vec<RuleMatch>,
}

impl Hits {
    /// One matching rule; `strings` gives each match of its strings as
    /// (identifier, offset, length, matched bytes).
    pub(super) fn rule<'m>(
        &mut self,
        identifier: &str,
        namespace: &str,
        tags: &[&str],
        meta: Map<String, Value>,
        strings: impl Iterator<Item = (&'m str, usize, usize, &'m [u8])>,
    ) {
        let mut shown = Vec::new();
        let mut total = 0usize;
        for (id, offset, length, data) in strings {
            total += 1;
            if shown.len() < self.max_strings {
                let data = &data[..data.len().min(self.max_match_bytes)];
                shown.push(json!({
                    "identifier": id,
                    "offset": offset,
                    "length": length,
                    "data": escape(data),
                }));
            }
        }
        self.reports.push(json!({
            "rule": identifier,
            "namespace": namespace,
            "tags": tags,
            "meta": meta,
            "strings": shown,
            "string_matches": total,
        }));
        self.matches
            .push(RuleMatch::new(identifier, tags.iter().copied()));
    }
}

/// Printable ASCII as is, everything else as `\xNN` (as `yara -s` prints).
fn escape(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len());
    for &b in data {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

pub(crate) struct YaraFactory;

impl ScannerFactory for YaraFactory {
    fn reports_matches(&self) -> bool {
        true
    }

    fn check(&self, config: &WorkerConfig) -> Result<(), ConfigError> {
        config.component.params::<YaraParams>().map(|_| ())
    }

    fn build(&self, config: &WorkerConfig) -> Result<Arc<dyn Scanner>, BuildError> {
        let params: YaraParams = config.component.params()?;
        let path = config.component.resolve_path(&params.rules);
        let cache = rules::cache_dir();
        let compiled = compile_with(&path, params.engine, cache.as_deref())
            .map_err(|e| BuildError::component(&config.component, e))?;
        log_compiled(&config.component.name, &compiled);
        let mut scanner = YaraScanner::new(
            config.component.name.clone(),
            path,
            compiled,
            config.timeout,
            &params,
        );
        scanner.cache = cache;
        Ok(Arc::new(scanner))
    }
}

fn log_compiled(worker: &str, compiled: &CompiledRules) {
    tracing::info!(
        worker,
        engine = compiled.engine.name(),
        rules = compiled.rule_count,
        files = compiled.files.len(),
        ruleset = %compiled.hash,
        "yara rules compiled"
    );
    if let Some(why) = &compiled.fallback {
        tracing::warn!(worker, reason = %why, "scanning with libyara");
    }
}

pub struct YaraScanner {
    name: String,
    /// Where the rules are read from, again on each reload.
    path: PathBuf,
    choice: EngineChoice,
    /// Where YARA-X keeps what it compiled.
    cache: Option<PathBuf>,
    /// The rules in use: a scan takes the ones loaded when it starts.
    loaded: RwLock<Arc<Loaded>>,
    watch: Mutex<Watch>,
    timeout: Duration,
    fast: bool,
    max_strings: usize,
    max_match_bytes: usize,
}

struct Loaded {
    engine: Engine,
    hash: String,
}

/// Each rule file's modification time and length: a change shows in them.
type Stamps = Result<Vec<(PathBuf, Option<SystemTime>, u64)>, String>;

fn stamps(path: &Path) -> Stamps {
    let files = rule_files(path).map_err(|e| e.to_string())?;
    Ok(files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (f, modified, len)
        })
        .collect())
}

/// What the reload check last saw of the rule files.
struct Watch {
    /// The files as they were when last compiled (successfully or not).
    compiled: Stamps,
    /// A change seen at the last look: compiled once it holds still for
    /// one more look, so that a file being written is not read half-done.
    settling: Option<Stamps>,
}

impl YaraScanner {
    fn new(
        name: String,
        path: PathBuf,
        compiled: CompiledRules,
        timeout: Duration,
        p: &YaraParams,
    ) -> Self {
        YaraScanner {
            name,
            watch: Mutex::new(Watch {
                compiled: stamps(&path),
                settling: None,
            }),
            path,
            choice: p.engine,
            cache: None,
            loaded: RwLock::new(Arc::new(Loaded {
                engine: compiled.engine,
                hash: compiled.hash,
            })),
            timeout,
            fast: p.fast,
            max_strings: p.max_strings,
            max_match_bytes: p.max_match_bytes,
        }
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().expect("rules lock").clone()
    }
}

impl Scanner for YaraScanner {
    fn info(&self) -> WorkerInfo {
        let loaded = self.current();
        WorkerInfo {
            name: self.name.clone(),
            version: format!("yara-1/{}", loaded.engine.version()),
            ruleset: Some(loaded.hash.clone()),
        }
    }

    fn reload(&self, force: bool) -> Reload {
        let now = stamps(&self.path);
        {
            let mut watch = self.watch.lock().expect("watch lock");
            if !force {
                if now == watch.compiled {
                    watch.settling = None;
                    return Reload::Unchanged;
                }
                if watch.settling.as_ref() != Some(&now) {
                    watch.settling = Some(now);
                    return Reload::Unchanged;
                }
            }
            // Recorded before compiling: broken files are reported once,
            // then tried again when they change.
            watch.settling = None;
            watch.compiled = now;
        }
        match compile_with(&self.path, self.choice, self.cache.as_deref()) {
            Ok(compiled) => {
                log_compiled(&self.name, &compiled);
                let previous = self.current().hash.clone();
                let ruleset = compiled.hash.clone();
                *self.loaded.write().expect("rules lock") = Arc::new(Loaded {
                    engine: compiled.engine,
                    hash: compiled.hash,
                });
                if ruleset == previous && !force {
                    return Reload::Unchanged;
                }
                Reload::Loaded {
                    ruleset,
                    rules: compiled.rule_count,
                }
            }
            Err(RulesError::Compile(errors)) => Reload::Failed { errors },
            Err(e) => Reload::Failed {
                errors: vec![e.to_string()],
            },
        }
    }

    fn scan(&self, input: &ScanInput<'_>) -> Result<ScanOutput, ScanError> {
        let loaded = self.current();
        let filename = input.display_name().unwrap_or_default();
        let extension = filename
            .rsplit_once('.')
            .map(|(_, x)| x.to_ascii_lowercase())
            .unwrap_or_default();
        let filetype = crate::detect(input.data).extension.to_ascii_uppercase();
        let filepath = input.event.source.path.as_deref().unwrap_or(filename);
        let settings = Settings {
            externals: [
                ("filename", filename),
                ("filepath", filepath),
                ("extension", extension.as_str()),
                ("filetype", filetype.as_str()),
            ],
            timeout: self.timeout,
            fast: self.fast,
        };
        let mut hits = Hits {
            max_strings: self.max_strings,
            max_match_bytes: self.max_match_bytes,
            reports: Vec::new(),
            matches: Vec::new(),
        };
        match &loaded.engine {
            Engine::Libyara(rules) => libyara::scan(rules, input.data, &settings, &mut hits)?,
            Engine::YaraX(rules) => yarax::scan(rules, input.data, &settings, &mut hits)?,
        }
        Ok(ScanOutput {
            data: json!({ "match_count": hits.reports.len(), "matches": hits.reports }),
            matches: hits.matches,
            children: Vec::new(),
            ruleset: Some(loaded.hash.clone()),
        })
    }
}

impl std::fmt::Debug for CompiledRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRules")
            .field("engine", &self.engine.name())
            .field("hash", &self.hash)
            .field("files", &self.files)
            .field("rule_count", &self.rule_count)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
