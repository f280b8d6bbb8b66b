//! Rule files, and compiling them with the engine a worker asks for.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{libyara, yarax};

/// Externals that public rule sets (signature-base, THOR's) expect; defined
/// empty at compile time and set per payload.
pub(super) const EXTERNALS: [&str; 4] = ["filename", "filepath", "extension", "filetype"];

/// Which YARA implementation scans; named in config and on the command
/// line as its `Display` and `FromStr` spell it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum EngineChoice {
    /// YARA-X where the rules compile there, libyara otherwise.
    #[default]
    Auto,
    YaraX,
    Libyara,
}

impl TryFrom<String> for EngineChoice {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl std::fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineChoice::Auto => "auto",
            EngineChoice::YaraX => "yara-x",
            EngineChoice::Libyara => "libyara",
        })
    }
}

impl std::str::FromStr for EngineChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "yara-x" => Ok(EngineChoice::YaraX),
            "libyara" => Ok(EngineChoice::Libyara),
            other => Err(format!(
                "unknown YARA engine {other:?}: use auto, yara-x or libyara"
            )),
        }
    }
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
    #[error("{}", trawl_core::problems_in_brief(.0))]
    Compile(Vec<String>),
}

impl RulesError {
    pub(super) fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        RulesError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }
}

/// Rules compiled by one engine.
pub enum Engine {
    Libyara(yara::Rules),
    YaraX(yarax::XRules),
}

impl Engine {
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Libyara(_) => "libyara",
            Engine::YaraX(_) => "yara-x",
        }
    }

    /// The engine and its version, as a worker's version names it.
    pub fn version(&self) -> &'static str {
        match self {
            Engine::Libyara(_) => libyara::VERSION,
            Engine::YaraX(_) => yarax::VERSION,
        }
    }
}

/// A compiled ruleset and its identity.
pub struct CompiledRules {
    pub engine: Engine,
    /// Hash of the compiled rules: results record which ruleset produced them.
    pub hash: String,
    pub files: Vec<PathBuf>,
    pub rule_count: usize,
    /// Under `auto`, why YARA-X was not used.
    pub fallback: Option<String>,
}

/// A compiled ruleset's hash, files and size, before its engine joins.
pub(super) struct Identity {
    hash: String,
    files: Vec<PathBuf>,
    rule_count: usize,
}

impl Identity {
    pub(super) fn with(self, engine: Engine) -> CompiledRules {
        CompiledRules {
            engine,
            hash: self.hash,
            files: self.files,
            rule_count: self.rule_count,
            fallback: None,
        }
    }
}

/// The files of a ruleset and the namespace each one's rules go in.
pub(super) struct Sources {
    pub(super) path: PathBuf,
    /// Each file with its namespace: its path below the folder, or `default`.
    pub(super) files: Vec<(PathBuf, String)>,
}

impl Sources {
    fn new(path: &Path) -> Result<Self, RulesError> {
        let root = path.is_dir().then_some(path);
        let files = rule_files(path)?
            .into_iter()
            .map(|file| {
                let namespace = root
                    .and_then(|r| file.strip_prefix(r).ok())
                    .map(|rel| rel.with_extension("").to_string_lossy().into_owned())
                    .unwrap_or_else(|| "default".to_owned());
                (file, namespace)
            })
            .collect();
        Ok(Sources {
            path: path.to_path_buf(),
            files,
        })
    }

    /// Set empty files apart: each is a problem of its own.
    fn take_empty(&mut self) -> Vec<PathBuf> {
        let (empty, files) = std::mem::take(&mut self.files)
            .into_iter()
            .partition(|(f, _)| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0) == 0);
        self.files = files;
        empty.into_iter().map(|(f, _)| f).collect()
    }

    /// What a compiled ruleset is known by: the hash of its saved form.
    pub(super) fn finish(&self, rule_count: usize, saved: &[u8]) -> Result<Identity, RulesError> {
        use sha2::{Digest, Sha256};
        if rule_count == 0 {
            return Err(RulesError::NoRules(self.path.clone()));
        }
        Ok(Identity {
            hash: hex::encode(&Sha256::digest(saved)[..16]),
            files: self.files.iter().map(|(f, _)| f.clone()).collect(),
            rule_count,
        })
    }
}

/// The rule files a path names: itself, or the `*.yar`/`*.yara` under it, sorted.
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, RulesError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => RulesError::NotFound(path.to_path_buf()),
        _ => RulesError::io(path, e),
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
        let entry = entry.map_err(|e| RulesError::io(path, e))?;
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

/// Compile the rules at `path` (a file or a folder) into one ruleset with
/// the engine chosen. In a folder, each file gets its own namespace (its
/// path below the folder). Every broken or empty file is reported at once.
/// YARA-X keeps what it compiled in the user's cache folder
/// (`$XDG_CACHE_HOME/trawl/yara-x`, or `~/.cache/trawl/yara-x`) and loads
/// it from there while the rule files stay the same.
pub fn compile(path: &Path, choice: EngineChoice) -> Result<CompiledRules, RulesError> {
    compile_with(path, choice, cache_dir().as_deref())
}

pub(super) fn cache_dir() -> Option<PathBuf> {
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("trawl").join("yara-x"))
}

/// [`compile`], keeping YARA-X's compiled rules in `cache` (or nowhere).
pub fn compile_with(
    path: &Path,
    choice: EngineChoice,
    cache: Option<&Path>,
) -> Result<CompiledRules, RulesError> {
    let mut sources = Sources::new(path)?;
    let empty = sources.take_empty();
    if sources.files.is_empty() {
        return Err(RulesError::EmptyFile(empty[0].clone()));
    }
    let compiled = match choice {
        EngineChoice::Libyara => libyara::compile(&sources),
        EngineChoice::YaraX => yarax::compile(&sources, cache),
        EngineChoice::Auto => match yarax::compile(&sources, cache) {
            Err(RulesError::Compile(problems)) => libyara::compile(&sources).map(|mut compiled| {
                compiled.fallback = Some(format!(
                    "YARA-X cannot compile these rules: {}",
                    trawl_core::problems_in_brief(&problems)
                ));
                compiled
            }),
            other => other,
        },
    };
    if empty.is_empty() {
        return compiled;
    }
    let mut problems: Vec<String> = empty
        .iter()
        .map(|f| format!("{}: rules file is empty", f.display()))
        .collect();
    match compiled {
        Err(RulesError::Compile(more)) => problems.extend(more),
        Err(other) => return Err(other),
        Ok(_) => {}
    }
    Err(RulesError::Compile(problems))
}
