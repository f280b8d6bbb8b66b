//! The YARA-X engine (pure Rust). One compiled ruleset serves every scan;
//! a YARA-X scanner is not `Send` and costs a WebAssembly instance to make,
//! so each thread keeps one per ruleset and reuses it.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

use serde_json::{json, Map, Value};
use trawl_core::ScanError;
use yara_x::{MetaValue, SourceCode};

use super::rules::{CompiledRules, Engine, RulesError, Sources, EXTERNALS};
use super::{escape, Hits, Settings};

pub(super) const VERSION: &str = "yara-x-1.22.1";

/// Compile `sources`, or load what an earlier compile of the same text
/// left in `cache` (compiling a large ruleset takes YARA-X a second or
/// more, and most of a scanner's peak memory).
pub(super) fn compile(
    sources: &Sources,
    cache: Option<&Path>,
) -> Result<CompiledRules, RulesError> {
    let texts = read(sources)?;
    let cached = cache.and_then(|dir| Cached::new(dir, &texts));
    if let Some(cached) = &cached {
        if let Some((count, saved)) = cached.load() {
            let hash = sources.finish(count, &saved)?;
            return Ok(hash.with(Engine::YaraX(XRules::loading(saved, cached.file.clone()))));
        }
    }
    let rules = build(&texts)?;
    let saved = rules
        .serialize()
        .map_err(|e| RulesError::Compile(vec![format!("{}: {e}", sources.path.display())]))?;
    let count = rules.iter().len();
    if let Some(cached) = cached {
        cached.store(count, &saved);
    }
    Ok(sources
        .finish(count, &saved)?
        .with(Engine::YaraX(XRules::ready(rules))))
}

/// Compiled YARA-X rules, shared by every scan; loaded from the cache on a
/// thread of their own, so that a node starts reading payloads meanwhile
/// (loading a large ruleset takes a quarter of a second).
#[derive(Clone)]
pub struct XRules(Arc<OnceLock<Result<yara_x::Rules, String>>>);

impl XRules {
    fn ready(rules: yara_x::Rules) -> Self {
        XRules(Arc::new(OnceLock::from(Ok(rules))))
    }

    fn loading(saved: Vec<u8>, file: PathBuf) -> Self {
        let cell = Arc::new(OnceLock::new());
        let load = {
            let cell = cell.clone();
            move || {
                let rules = yara_x::Rules::deserialize(&saved).map_err(|e| {
                    // Compiled again from the files next time.
                    let _ = std::fs::remove_file(&file);
                    format!("compiled rules {} unusable ({e}); they are compiled again at the next reload", file.display())
                });
                let _ = cell.set(rules);
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("yara-x-load".into())
            .spawn(load)
        {
            let _ = cell.set(Err(format!("cannot start loading the rules: {e}")));
        }
        XRules(cell)
    }

    /// The rules, once loaded.
    fn get(&self) -> Result<&yara_x::Rules, ScanError> {
        self.0
            .wait()
            .as_ref()
            .map_err(|e| ScanError::Failed(format!("yara-x: {e}")))
    }
}

/// A rule file, its namespace and its text.
struct Text<'s> {
    file: &'s Path,
    namespace: &'s str,
    text: Vec<u8>,
}

fn read(sources: &Sources) -> Result<Vec<Text<'_>>, RulesError> {
    sources
        .files
        .iter()
        .map(|(file, namespace)| {
            Ok(Text {
                file,
                namespace,
                text: std::fs::read(file).map_err(|e| RulesError::io(file, e))?,
            })
        })
        .collect()
}

fn build(texts: &[Text<'_>]) -> Result<yara_x::Rules, RulesError> {
    let mut compiler = yara_x::Compiler::new();
    // The regular expressions of rules written for libyara (an unescaped
    // `{`, `\` before an ordinary character) compile as libyara reads them.
    compiler.relaxed_re_syntax(true);
    for name in EXTERNALS {
        compiler
            .define_global(name, "")
            .map_err(|e| RulesError::Compile(vec![format!("external {name}: {e}")]))?;
    }
    for t in texts {
        compiler.new_namespace(t.namespace);
        if let Some(dir) = t.file.parent() {
            compiler.add_include_dir(dir);
        }
        // Errors are collected below, every file's at once.
        let source = SourceCode::from(t.text.as_slice()).with_origin(t.file.display().to_string());
        let _ = compiler.add_source(source);
    }
    let problems: Vec<String> = compiler
        .errors()
        .iter()
        .map(|e| describe(e, texts))
        .collect();
    if !problems.is_empty() {
        return Err(RulesError::Compile(problems));
    }
    Ok(compiler.build())
}

/// Compiled rules kept in a folder of the user's, named by the digest of
/// the texts they were compiled from, and checked by a digest of their own
/// when read back (YARA-X must only load what it wrote).
struct Cached {
    dir: PathBuf,
    file: PathBuf,
}

/// Compiled rulesets kept; the least recently used go first.
const CACHE_KEEP: usize = 8;

/// The layout of a kept copy (digest, rule count, saved rules): part of
/// its name, so that a copy of another layout is never read as this one.
const CACHE_LAYOUT: &[u8] = b"trawl-yarx-3";

/// How deep includes are followed for the name (the compiler refuses cycles).
const INCLUDE_DEPTH: usize = 16;

fn add(key: &mut Sha256, part: &[u8]) {
    key.update((part.len() as u64).to_le_bytes());
    key.update(part);
}

/// Add the text of every file `text` includes (found beside `file`, as the
/// compiler looks first), and of what those include.
fn add_included(key: &mut Sha256, file: &Path, text: &[u8], depth: usize) -> Option<()> {
    for line in text.split(|&b| b == b'\n') {
        let Some(rest) = line.trim_ascii_start().strip_prefix(b"include") else {
            continue;
        };
        let mut quoted = rest.trim_ascii_start().split(|&b| b == b'"');
        let (Some(b""), Some(name)) = (quoted.next(), quoted.next()) else {
            continue;
        };
        if depth >= INCLUDE_DEPTH {
            return None;
        }
        let path = file.parent()?.join(std::str::from_utf8(name).ok()?);
        let included = std::fs::read(&path).ok()?;
        // Where the file is, however the way there is spelled (a relative
        // rules path, `..`, a symlink): else each spelling compiles again.
        let real = std::fs::canonicalize(&path).ok()?;
        add(key, real.as_os_str().as_encoded_bytes());
        add(key, &included);
        add_included(key, &path, &included, depth + 1)?;
    }
    Some(())
}

impl Cached {
    /// `None` where an included file cannot be read (the compiler says why).
    fn new(dir: &Path, texts: &[Text<'_>]) -> Option<Self> {
        let mut key = Sha256::new();
        key.update(CACHE_LAYOUT);
        key.update(VERSION);
        for t in texts {
            for part in [t.namespace.as_bytes(), &t.text] {
                add(&mut key, part);
            }
            add_included(&mut key, t.file, &t.text, 0)?;
        }
        let name = format!("{}.yarx", hex::encode(&key.finalize()[..16]));
        Some(Cached {
            file: dir.join(name),
            dir: dir.to_path_buf(),
        })
    }

    /// The rule count and the saved rules, if a whole copy is kept where
    /// only this user can write: a copy holds native code that is run.
    fn load(&self) -> Option<(usize, Vec<u8>)> {
        if let Err(why) = [&self.dir, &self.file]
            .into_iter()
            .try_for_each(|p| private(p))
        {
            tracing::warn!(dir = %self.dir.display(), why, "compiled yara-x rules not loaded from the cache");
            return None;
        }
        let mut saved = std::fs::read(&self.file).ok()?;
        if saved.len() < 40 || Sha256::digest(&saved[32..])[..] != saved[..32] {
            return None;
        }
        let count = u64::from_le_bytes(saved[32..40].try_into().ok()?);
        // Touched, so that the rulesets in use are the ones kept.
        let _ = std::fs::File::options()
            .append(true)
            .open(&self.file)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Some((usize::try_from(count).ok()?, saved.split_off(40)))
    }

    /// Best effort: a ruleset not kept is compiled again next time.
    fn store(&self, count: usize, saved: &[u8]) {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let write = || -> std::io::Result<()> {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)?;
            let tmp = self
                .file
                .with_extension(format!("tmp{}", std::process::id()));
            let mut f = std::fs::File::options()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let count = (count as u64).to_le_bytes();
            let digest = Sha256::new()
                .chain_update(count)
                .chain_update(saved)
                .finalize();
            f.write_all(&digest)?;
            f.write_all(&count)?;
            f.write_all(saved)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)?;
            self.prune()
        };
        if let Err(e) = write() {
            tracing::debug!(dir = %self.dir.display(), error = %e, "compiled yara-x rules not kept");
        }
    }

    fn prune(&self) -> std::io::Result<()> {
        let mut kept: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "yarx"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        kept.sort_by_key(|k| std::cmp::Reverse(k.0));
        for (_, old) in kept.into_iter().skip(CACHE_KEEP) {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

/// Whether only this user can change `path` (a missing one is not loaded).
fn private(path: &Path) -> Result<(), &'static str> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if meta.uid() != unsafe { libc::geteuid() } {
        Err("owned by another user")
    } else if meta.mode() & 0o022 != 0 {
        Err("writable by other users")
    } else {
        Ok(())
    }
}

/// `file:line: title: what the label says`, as libyara's errors read.
fn describe(error: &yara_x::errors::CompileError, texts: &[Text<'_>]) -> String {
    let Some(label) = error.labels().next() else {
        return error.title().to_owned();
    };
    let origin = label.origin().unwrap_or("rules");
    let text = texts
        .iter()
        .find(|t| t.file.display().to_string() == origin)
        .map(|t| &t.text);
    let line = text.map_or(0, |text| {
        let start = (label.span().0.start as usize).min(text.len());
        text[..start].iter().filter(|&&b| b == b'\n').count() + 1
    });
    format!("{origin}:{line}: {}: {}", error.title(), label.text())
}

self_cell::self_cell!(
    /// A scanner and the rules it borrows (loaded before it is made).
    struct Slot {
        owner: XRules,
        #[covariant]
        dependent: Scanner,
    }
);

type Scanner<'r> = yara_x::Scanner<'r>;

thread_local! {
    /// This thread's scanners, one per ruleset in use.
    static SLOTS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn scan(
    rules: &XRules,
    data: &[u8],
    settings: &Settings<'_>,
    hits: &mut Hits,
) -> Result<(), ScanError> {
    rules.get()?;
    SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        // A ruleset only this thread still holds was replaced by a reload.
        slots.retain(|s| Arc::strong_count(&s.borrow_owner().0) > 1);
        let at = match slots
            .iter()
            .position(|s| Arc::ptr_eq(&s.borrow_owner().0, &rules.0))
        {
            Some(at) => at,
            None => {
                let slot = Slot::new(rules.clone(), |r| {
                    yara_x::Scanner::new(r.get().expect("loaded: checked above"))
                });
                slots.push(slot);
                slots.len() - 1
            }
        };
        slots[at].with_dependent_mut(|_, scanner| scan_with(scanner, data, settings, hits))
    })
}

fn scan_with(
    scanner: &mut Scanner<'_>,
    data: &[u8],
    settings: &Settings<'_>,
    hits: &mut Hits,
) -> Result<(), ScanError> {
    let fail = |e: &dyn std::fmt::Display| ScanError::Failed(format!("yara-x: {e}"));
    scanner.set_timeout(settings.timeout);
    scanner.fast_scan(settings.fast);
    for (name, value) in settings.externals {
        scanner.set_global(name, value).map_err(|e| fail(&e))?;
    }
    let results = match scanner.scan(data) {
        Ok(results) => results,
        Err(yara_x::ScanError::Timeout) => return Err(ScanError::Timeout(settings.timeout)),
        Err(e) => return Err(fail(&e)),
    };
    for rule in results.matching_rules() {
        let mut meta = Map::new();
        for (name, value) in rule.metadata() {
            meta.insert(name.to_owned(), meta_json(value));
        }
        let tags: Vec<&str> = rule.tags().map(|t| t.identifier()).collect();
        let patterns: Vec<_> = rule.patterns().collect();
        let strings = patterns.iter().flat_map(|p| {
            p.matches()
                .map(|m| (p.identifier(), m.range().start, m.range().len(), m.data()))
        });
        hits.rule(rule.identifier(), rule.namespace(), &tags, meta, strings);
    }
    Ok(())
}

fn meta_json(value: MetaValue<'_>) -> Value {
    match value {
        MetaValue::Integer(i) => json!(i),
        MetaValue::Float(f) => json!(f),
        MetaValue::Bool(b) => json!(b),
        MetaValue::String(s) => json!(s),
        MetaValue::Bytes(b) => json!(escape(b)),
    }
}
