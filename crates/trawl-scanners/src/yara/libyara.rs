//! The libyara engine (4.5, built from source by the `yara` crate).

use std::path::Path;

use serde_json::{json, Map};
use trawl_core::ScanError;
use yara::{CallbackMsg, CallbackReturn, CompileErrorLevel, MetadataValue, YaraErrorKind};

use super::rules::{CompiledRules, Engine, RulesError, Sources, EXTERNALS};
use super::{Hits, Settings};

pub(super) const VERSION: &str = "libyara-4.5.5";

pub(super) fn compile(sources: &Sources) -> Result<CompiledRules, RulesError> {
    let mut compiler = new_compiler()?;
    for (file, namespace) in &sources.files {
        compiler = match compiler.add_rules_file_with_namespace(file, namespace) {
            Ok(c) => c,
            // libyara stops at a file's first error: each file alone tells
            // what else is broken.
            Err(e) => return Err(every_problem(sources, compile_error(file, e))),
        };
    }
    let fail = |e: &dyn std::fmt::Display| {
        RulesError::Compile(vec![format!("{}: {e}", sources.path.display())])
    };
    let mut rules = compiler.compile_rules().map_err(|e| fail(&e))?;
    let rule_count = rules.get_rules().len();
    let mut saved = Vec::new();
    rules.save_to_stream(&mut saved).map_err(|e| fail(&e))?;
    Ok(sources
        .finish(rule_count, &saved)?
        .with(Engine::Libyara(rules)))
}

/// `first`, and what compiling each file on its own finds wrong.
fn every_problem(sources: &Sources, first: RulesError) -> RulesError {
    let RulesError::Compile(_) = first else {
        return first;
    };
    let mut problems = Vec::new();
    for (file, _) in &sources.files {
        let result = new_compiler().and_then(|c| {
            c.add_rules_file(file)
                .map(drop)
                .map_err(|e| compile_error(file, e))
        });
        match result {
            Ok(()) => {}
            Err(RulesError::Compile(messages)) => problems.extend(messages),
            Err(other) => problems.push(other.to_string()),
        }
    }
    if problems.is_empty() {
        // Broken only together (a rule name used twice across files).
        return first;
    }
    RulesError::Compile(problems)
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
                    format!(
                        "{name}:{}: {}{}",
                        e.line,
                        e.message,
                        without_openssl(&e.message)
                    )
                })
                .collect(),
        ),
        other => RulesError::io(file, other),
    }
}

/// Why libyara refuses a rule that YARA-X takes: trawl builds it without
/// OpenSSL (no system library), which leaves out the `hash` module and the
/// pe module's signature fields and imphash.
fn without_openssl(message: &str) -> &'static str {
    const FIELDS: [&str; 4] = [
        "\"number_of_signatures\"",
        "\"signatures\"",
        "\"is_signed\"",
        "\"imphash\"",
    ];
    let missing = message.contains("unknown module \"hash\"")
        || (message.starts_with("invalid field name")
            && FIELDS.iter().any(|f| message.contains(f)));
    if missing {
        " (trawl's libyara is built without OpenSSL: no hash module, no PE signatures, no imphash; the yara-x engine has them)"
    } else {
        ""
    }
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

pub(super) fn scan(
    rules: &yara::Rules,
    data: &[u8],
    settings: &Settings<'_>,
    hits: &mut Hits,
) -> Result<(), ScanError> {
    let fail = |e: yara::YaraError| ScanError::Failed(format!("libyara: {e}"));
    let mut scanner = rules.scanner().map_err(fail)?;
    // libyara counts whole seconds; round up so a short timeout is not zero (= none).
    let seconds = settings
        .timeout
        .as_secs_f64()
        .ceil()
        .clamp(1.0, i32::MAX as f64) as i32;
    scanner.set_timeout(seconds);
    // With neither REPORT flag set, libyara also reports every rule that
    // did not match, and each report costs a conversion.
    let mut flags = yara::ScanFlags::REPORT_RULES_MATCHING;
    if settings.fast {
        flags |= yara::ScanFlags::FAST_MODE;
    }
    scanner.set_flags(flags);
    for (name, value) in settings.externals {
        scanner
            .define_variable(name, external(value).as_ref())
            .map_err(fail)?;
    }
    let result = scanner.scan_mem_callback(data, |msg| {
        if let CallbackMsg::RuleMatching(rule) = msg {
            let mut meta = Map::new();
            for m in &rule.metadatas {
                let v = match m.value {
                    MetadataValue::Integer(i) => json!(i),
                    MetadataValue::String(s) => json!(s),
                    MetadataValue::Boolean(b) => json!(b),
                };
                meta.insert(m.identifier.to_owned(), v);
            }
            let strings = rule.strings.iter().flat_map(|s| {
                s.matches
                    .iter()
                    .map(|m| (s.identifier, m.base + m.offset, m.length, m.data.as_slice()))
            });
            hits.rule(rule.identifier, rule.namespace, &rule.tags, meta, strings);
        }
        CallbackReturn::Continue
    });
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind == YaraErrorKind::ScanTimeout => Err(ScanError::Timeout(
            std::time::Duration::from_secs(seconds as u64),
        )),
        Err(e) => Err(fail(e)),
    }
}
