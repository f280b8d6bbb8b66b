//! The YARA-X engine (pure Rust). One compiled ruleset serves every scan;
//! a YARA-X scanner is not `Send` and costs a WebAssembly instance to make,
//! so each thread keeps one per ruleset and reuses it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use trawl_core::ScanError;
use yara_x::{MetaValue, SourceCode};

use super::rules::{CompiledRules, Engine, RulesError, Sources, EXTERNALS};
use super::{escape, Hits, Settings};

pub(super) const VERSION: &str = "yara-x-1.22.1";

pub(super) fn compile(sources: &Sources) -> Result<CompiledRules, RulesError> {
    let mut compiler = yara_x::Compiler::new();
    // The regular expressions of rules written for libyara (an unescaped
    // `{`, `\` before an ordinary character) compile as libyara reads them.
    compiler.relaxed_re_syntax(true);
    for name in EXTERNALS {
        compiler
            .define_global(name, "")
            .map_err(|e| RulesError::Compile(vec![format!("external {name}: {e}")]))?;
    }
    let mut texts = HashMap::new();
    for (file, namespace) in &sources.files {
        let text = std::fs::read(file).map_err(|e| RulesError::Io {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        let origin = file.display().to_string();
        compiler.new_namespace(namespace);
        if let Some(dir) = file.parent() {
            compiler.add_include_dir(dir);
        }
        // Errors are collected below, every file's at once.
        let _ = compiler.add_source(SourceCode::from(text.as_slice()).with_origin(origin.clone()));
        texts.insert(origin, text);
    }
    let problems: Vec<String> = compiler
        .errors()
        .iter()
        .map(|e| describe(e, &texts))
        .collect();
    if !problems.is_empty() {
        return Err(RulesError::Compile(problems));
    }
    let rules = compiler.build();
    let saved = rules
        .serialize()
        .map_err(|e| RulesError::Compile(vec![format!("{}: {e}", sources.path.display())]))?;
    let count = rules.iter().len();
    sources.finish(Engine::YaraX(Arc::new(rules)), count, &saved)
}

/// `file:line: title: what the label says`, as libyara's errors read.
fn describe(error: &yara_x::errors::CompileError, texts: &HashMap<String, Vec<u8>>) -> String {
    let Some(label) = error.labels().next() else {
        return error.title().to_owned();
    };
    let origin = label.origin().unwrap_or("rules");
    let line = texts.get(origin).map_or(0, |text| {
        let start = (label.span().0.start as usize).min(text.len());
        text[..start].iter().filter(|&&b| b == b'\n').count() + 1
    });
    format!("{origin}:{line}: {}: {}", error.title(), label.text())
}

self_cell::self_cell!(
    /// A scanner and the rules it borrows.
    struct Slot {
        owner: Arc<yara_x::Rules>,
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
    rules: &Arc<yara_x::Rules>,
    data: &[u8],
    settings: &Settings<'_>,
    hits: &mut Hits,
) -> Result<(), ScanError> {
    SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        // A ruleset only this thread still holds was replaced by a reload.
        slots.retain(|s| Arc::strong_count(s.borrow_owner()) > 1);
        let at = match slots
            .iter()
            .position(|s| Arc::ptr_eq(s.borrow_owner(), rules))
        {
            Some(at) => at,
            None => {
                slots.push(Slot::new(rules.clone(), |r| yara_x::Scanner::new(r)));
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
