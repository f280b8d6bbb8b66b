//! YARA through libyara: rules compiled once per ruleset and shared by every
//! scan slot; one libyara scanner per scan carries that payload's externals.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use trawl_config::{BuildError, ConfigError, WorkerConfig};
use trawl_core::{Reload, RuleMatch, ScanError, ScanInput, ScanOutput, Scanner, WorkerInfo};
use yara::{CallbackMsg, CallbackReturn, CompileErrorLevel, MetadataValue, Rules, YaraErrorKind};

use crate::factory::ScannerFactory;

/// Externals that public rule sets (signature-base, THOR's) expect; defined
/// empty at compile time and set per payload.
const EXTERNALS: [&str; 4] = ["filename", "filepath", "extension", "filetype"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YaraParams {
    /// A rules file, or a folder searched recursively for `*.yar` / `*.yara`.
    rules: String,
    /// libyara's fast mode: report each string's first match only.
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

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    #[error("rules path {0} does not exist")]
    NotFound(PathBuf),
    #[error("rules file {0} is empty")]
    EmptyFile(PathBuf),
    #[error("no rules in {0}")]
    NoRules(PathBuf),
    #[error("no *.yar or *.yara files under {0}")]
    NoRuleFiles(PathBuf),
    #[error("cannot read rules {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// Each message reads `file:line: text`.
    #[error("{}", .0.join("; "))]
    Compile(Vec<String>),
}

/// A compiled ruleset and its identity.
pub struct CompiledRules {
    pub rules: Rules,
    /// Hash of the compiled rules: results record which ruleset produced them.
    pub hash: String,
    pub files: Vec<PathBuf>,
    pub rule_count: usize,
}

/// The rule files a path names: itself, or the `*.yar`/`*.yara` under it, sorted.
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, RulesError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => RulesError::NotFound(path.to_path_buf()),
        _ => RulesError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
        let entry = entry.map_err(|e| RulesError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let is_rule = entry
            .path()
            .extension()
            .is_some_and(|x| x == "yar" || x == "yara");
        if entry.file_type().is_file() && is_rule {
            files.push(entry.into_path());
        }
    }
    if files.is_empty() {
        return Err(RulesError::NoRuleFiles(path.to_path_buf()));
    }
    Ok(files)
}

/// Compile the rules at `path` (a file or a folder) into one ruleset.
/// In a folder, each file gets its own namespace (its path below the folder).
pub fn compile(path: &Path) -> Result<CompiledRules, RulesError> {
    let files = rule_files(path)?;
    let root = path.is_dir().then_some(path);
    let mut compiler = new_compiler()?;
    for file in &files {
        if std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) == 0 {
            return Err(RulesError::EmptyFile(file.clone()));
        }
        let namespace = root
            .and_then(|r| file.strip_prefix(r).ok())
            .map(|rel| rel.with_extension("").to_string_lossy().into_owned())
            .unwrap_or_else(|| "default".to_owned());
        compiler = compiler
            .add_rules_file_with_namespace(file, &namespace)
            .map_err(|e| compile_error(file, e))?;
    }
    let mut rules = compiler
        .compile_rules()
        .map_err(|e| RulesError::Compile(vec![format!("{}: {e}", path.display())]))?;
    let rule_count = rules.get_rules().len();
    if rule_count == 0 {
        return Err(RulesError::NoRules(path.to_path_buf()));
    }
    let mut saved = Vec::new();
    rules
        .save_to_stream(&mut saved)
        .map_err(|e| RulesError::Compile(vec![format!("{}: {e}", path.display())]))?;
    let hash = hex::encode(&Sha256::digest(&saved)[..16]);
    Ok(CompiledRules {
        rules,
        hash,
        files,
        rule_count,
    })
}

/// Check every rule file on its own, so that all broken files are reported at once.
pub fn check(path: &Path) -> Result<CompiledRules, RulesError> {
    let files = rule_files(path)?;
    let mut problems = Vec::new();
    for file in &files {
        if std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) == 0 {
            problems.push(format!("{}: rules file is empty", file.display()));
            continue;
        }
        let result = new_compiler().and_then(|c| {
            c.add_rules_file(file)
                .map(|_| ())
                .map_err(|e| compile_error(file, e))
        });
        if let Err(e) = result {
            match e {
                RulesError::Compile(messages) => problems.extend(messages),
                other => problems.push(other.to_string()),
            }
        }
    }
    if !problems.is_empty() {
        return Err(RulesError::Compile(problems));
    }
    compile(path)
}

fn new_compiler() -> Result<yara::Compiler, RulesError> {
    let mut compiler = yara::Compiler::new()
        .map_err(|e| RulesError::Compile(vec![format!("cannot start the YARA compiler: {e}")]))?;
    for name in EXTERNALS {
        compiler
            .define_variable(name, "")
            .map_err(|e| RulesError::Compile(vec![format!("external {name}: {e}")]))?;
    }
    Ok(compiler)
}

fn compile_error(file: &Path, error: yara::Error) -> RulesError {
    match error {
        yara::Error::Compile(errors) => RulesError::Compile(
            errors
                .iter()
                .filter(|e| e.level == CompileErrorLevel::Error)
                .map(|e| {
                    let name = e
                        .filename
                        .clone()
                        .unwrap_or_else(|| file.display().to_string());
                    format!("{name}:{}: {}", e.line, e.message)
                })
                .collect(),
        ),
        other => RulesError::Io {
            path: file.to_path_buf(),
            reason: other.to_string(),
        },
    }
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
        let compiled = compile(&path).map_err(|e| BuildError::component(&config.component, e))?;
        tracing::info!(
            worker = %config.component.name,
            rules = compiled.rule_count,
            files = compiled.files.len(),
            ruleset = %compiled.hash,
            "yara rules compiled"
        );
        Ok(Arc::new(YaraScanner::new(
            config.component.name.clone(),
            path,
            compiled,
            config.timeout,
            &params,
        )))
    }
}

pub struct YaraScanner {
    name: String,
    version: String,
    /// Where the rules are read from, again on each reload.
    path: PathBuf,
    /// The rules in use: a scan takes the ones loaded when it starts.
    loaded: RwLock<Arc<Loaded>>,
    watch: Mutex<Watch>,
    timeout_secs: i32,
    fast: bool,
    max_strings: usize,
    max_match_bytes: usize,
}

struct Loaded {
    rules: Rules,
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
        timeout: std::time::Duration,
        p: &YaraParams,
    ) -> Self {
        YaraScanner {
            name,
            version: format!("yara-1/libyara-{}", yara_version()),
            watch: Mutex::new(Watch {
                compiled: stamps(&path),
                settling: None,
            }),
            path,
            loaded: RwLock::new(Arc::new(Loaded {
                rules: compiled.rules,
                hash: compiled.hash,
            })),
            // libyara counts whole seconds; round up so a short timeout is not zero (= none).
            timeout_secs: timeout.as_secs_f64().ceil().clamp(1.0, i32::MAX as f64) as i32,
            fast: p.fast,
            max_strings: p.max_strings,
            max_match_bytes: p.max_match_bytes,
        }
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().expect("rules lock").clone()
    }

    fn rule_json(&self, rule: &yara::Rule<'_>) -> Value {
        let mut meta = Map::new();
        for m in &rule.metadatas {
            let v = match m.value {
                MetadataValue::Integer(i) => json!(i),
                MetadataValue::String(s) => json!(s),
                MetadataValue::Boolean(b) => json!(b),
            };
            meta.insert(m.identifier.to_owned(), v);
        }
        let mut strings = Vec::new();
        let mut total = 0usize;
        for s in &rule.strings {
            for m in &s.matches {
                total += 1;
                if strings.len() < self.max_strings {
                    let shown = &m.data[..m.data.len().min(self.max_match_bytes)];
                    strings.push(json!({
                        "identifier": s.identifier,
                        "offset": m.base + m.offset,
                        "length": m.length,
                        "data": escape(shown),
                    }));
                }
            }
        }
        json!({
            "rule": rule.identifier,
            "namespace": rule.namespace,
            "tags": rule.tags,
            "meta": meta,
            "strings": strings,
            "string_matches": total,
        })
    }
}

fn yara_version() -> &'static str {
    "4.5.5"
}

/// An external's value as libyara can take it: a C string holds no NUL, so
/// a name crafted with one (`eicar\0.com`) has it replaced rather than
/// failing the scan. The result keeps the original name.
fn external(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains('\0') {
        value.replace('\0', "\u{fffd}").into()
    } else {
        value.into()
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

impl Scanner for YaraScanner {
    fn info(&self) -> WorkerInfo {
        WorkerInfo {
            name: self.name.clone(),
            version: self.version.clone(),
            ruleset: Some(self.current().hash.clone()),
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
        match check(&self.path) {
            Ok(compiled) => {
                let previous = self.current().hash.clone();
                let ruleset = compiled.hash.clone();
                *self.loaded.write().expect("rules lock") = Arc::new(Loaded {
                    rules: compiled.rules,
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
        let fail = |e: yara::YaraError| ScanError::Failed(format!("libyara: {e}"));
        let loaded = self.current();
        let mut scanner = loaded.rules.scanner().map_err(fail)?;
        scanner.set_timeout(self.timeout_secs);
        // With neither REPORT flag set, libyara also reports every rule that
        // did not match, and each report costs a conversion.
        let mut flags = yara::ScanFlags::REPORT_RULES_MATCHING;
        if self.fast {
            flags |= yara::ScanFlags::FAST_MODE;
        }
        scanner.set_flags(flags);
        let filename = input.display_name().unwrap_or_default();
        let extension = filename
            .rsplit_once('.')
            .map(|(_, x)| x.to_ascii_lowercase())
            .unwrap_or_default();
        let filetype = crate::detect(input.data).extension.to_ascii_uppercase();
        let filepath = input.event.source.path.as_deref().unwrap_or(filename);
        for (name, value) in [
            ("filename", filename),
            ("filepath", filepath),
            ("extension", extension.as_str()),
            ("filetype", filetype.as_str()),
        ] {
            scanner
                .define_variable(name, external(value).as_ref())
                .map_err(fail)?;
        }
        let (mut reports, mut matches) = (Vec::new(), Vec::new());
        let result = scanner.scan_mem_callback(input.data, |msg| {
            if let CallbackMsg::RuleMatching(rule) = msg {
                reports.push(self.rule_json(&rule));
                matches.push(RuleMatch::new(rule.identifier, rule.tags.iter().copied()));
            }
            CallbackReturn::Continue
        });
        match result {
            Ok(()) => Ok(ScanOutput {
                data: json!({ "match_count": reports.len(), "matches": reports }),
                matches,
                children: Vec::new(),
                ruleset: Some(loaded.hash.clone()),
            }),
            Err(e) if e.kind == YaraErrorKind::ScanTimeout => Err(ScanError::Timeout(
                std::time::Duration::from_secs(self.timeout_secs as u64),
            )),
            Err(e) => Err(fail(e)),
        }
    }
}

impl std::fmt::Debug for CompiledRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRules")
            .field("hash", &self.hash)
            .field("files", &self.files)
            .field("rule_count", &self.rule_count)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
