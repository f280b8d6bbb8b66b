//! `pe` and `elf`: facts about Windows and Unix executables, parsed with
//! goblin. A file of another format is reported as such (not an error); a
//! file that claims the format but does not parse is an error result.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use goblin::elf::Elf;
use goblin::pe::PE;
use serde_json::{json, Value};
use trawl_config::{BuildError, ConfigError, WorkerConfig};
use trawl_core::{ScanError, ScanInput, ScanOutput, Scanner, WorkerInfo};

use crate::factory::{NoParams, ScannerFactory};

/// At most this many imports / exports / symbols / sections are listed
/// (counts are whole).
const LIST_LIMIT: usize = 2000;

/// Shannon entropy in bits per byte (0–8): packed or encrypted data is near 8.
pub fn entropy(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut counts = [0u64; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let n = data.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

fn rounded(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn slice(data: &[u8], offset: u64, size: u64) -> &[u8] {
    let start = (offset as usize).min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    &data[start..end]
}

/// Section entropy reads at most twice the file: sections that overlap, or
/// thousands that each claim the whole file, cannot multiply the work. Past
/// the budget a section's entropy is `null`.
struct Entropies<'a> {
    input: &'a ScanInput<'a>,
    left: usize,
}

impl<'a> Entropies<'a> {
    fn new(input: &'a ScanInput<'a>) -> Self {
        Entropies {
            input,
            left: input.data.len().saturating_mul(2),
        }
    }

    fn of(&mut self, offset: u64, size: u64) -> Result<Option<f64>, ScanError> {
        self.input.overdue()?;
        let bytes = slice(self.input.data, offset, size);
        if bytes.len() > self.left {
            return Ok(None);
        }
        self.left -= bytes.len();
        Ok(Some(rounded(entropy(bytes))))
    }
}

#[derive(Clone, Copy)]
enum Format {
    Pe,
    Elf,
}

pub(crate) struct ExecutableFactory(Format);

pub(crate) const PE_FACTORY: ExecutableFactory = ExecutableFactory(Format::Pe);
pub(crate) const ELF_FACTORY: ExecutableFactory = ExecutableFactory(Format::Elf);

impl ScannerFactory for ExecutableFactory {
    fn check(&self, config: &WorkerConfig) -> Result<(), ConfigError> {
        config.component.params::<NoParams>().map(|_| ())
    }

    fn build(&self, config: &WorkerConfig) -> Result<Arc<dyn Scanner>, BuildError> {
        self.check(config)?;
        Ok(Arc::new(ExecutableScanner {
            format: self.0,
            info: WorkerInfo::new(config.component.name.clone(), "1"),
        }))
    }
}

struct ExecutableScanner {
    format: Format,
    info: WorkerInfo,
}

impl Scanner for ExecutableScanner {
    fn info(&self) -> WorkerInfo {
        self.info.clone()
    }

    fn scan(&self, input: &ScanInput<'_>) -> Result<ScanOutput, ScanError> {
        let facts = match self.format {
            Format::Pe => pe_facts(input),
            Format::Elf => elf_facts(input),
        };
        facts.map(ScanOutput::findings)
    }
}

/// PE's import hash: md5 over `dll.function` (lowercase, dll without its
/// extension, ordinals as `ordN`), comma-joined in import order.
fn imphash(pe: &PE<'_>) -> Option<String> {
    if pe.imports.is_empty() {
        return None;
    }
    let parts: Vec<String> = pe
        .imports
        .iter()
        .map(|i| {
            let dll = i.dll.to_lowercase();
            let dll = ["dll", "ocx", "sys"]
                .iter()
                .find_map(|ext| dll.strip_suffix(&format!(".{ext}")))
                .unwrap_or(&dll)
                .to_owned();
            let func = if i.name.starts_with("ORDINAL ") || i.name.is_empty() {
                format!("ord{}", i.ordinal)
            } else {
                i.name.to_lowercase()
            };
            format!("{dll}.{func}")
        })
        .collect();
    Some(hex::encode(crate::hash::md5(parts.join(",").as_bytes())))
}

fn pe_facts(input: &ScanInput<'_>) -> Result<Value, ScanError> {
    let data = input.data;
    if !data.starts_with(b"MZ") {
        return Ok(json!({"is_pe": false}));
    }
    let pe = PE::parse(data).map_err(|e| ScanError::Failed(format!("malformed PE: {e}")))?;
    let coff = &pe.header.coff_header;
    let compiled = Utc
        .timestamp_opt(i64::from(coff.time_date_stamp), 0)
        .single()
        .map(|t| t.to_rfc3339());
    let mut entropies = Entropies::new(input);
    let sections = pe
        .sections
        .iter()
        .take(LIST_LIMIT)
        .map(|s| {
            let entropy = entropies.of(
                u64::from(s.pointer_to_raw_data),
                u64::from(s.size_of_raw_data),
            )?;
            Ok(json!({
                "name": s.name().unwrap_or("?"),
                "virtual_size": s.virtual_size,
                "raw_size": s.size_of_raw_data,
                "entropy": entropy,
                "characteristics": s.characteristics,
            }))
        })
        .collect::<Result<Vec<Value>, ScanError>>()?;
    let mut imports: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for i in pe.imports.iter().take(LIST_LIMIT) {
        imports.entry(i.dll).or_default().push(i.name.to_string());
    }
    let exports: Vec<&str> = pe
        .exports
        .iter()
        .filter_map(|e| e.name)
        .take(LIST_LIMIT)
        .collect();
    let subsystem = pe
        .header
        .optional_header
        .map(|o| o.windows_fields.subsystem);
    Ok(json!({
        "is_pe": true,
        "machine": goblin::pe::header::machine_to_str(coff.machine),
        "is_64": pe.is_64,
        "is_dll": pe.is_lib,
        "compile_time": compiled,
        "entry_point": pe.entry,
        "image_base": pe.image_base,
        "subsystem": subsystem,
        "section_count": pe.sections.len(),
        "sections": sections,
        "import_count": pe.imports.len(),
        "imports": imports,
        "export_count": pe.exports.len(),
        "exports": exports,
        "imphash": imphash(&pe),
        "signed": !pe.certificates.is_empty(),
        "overlay_bytes": overlay(&pe, data),
    }))
}

/// Bytes past the last section: installers and droppers carry payloads there.
fn overlay(pe: &PE<'_>, data: &[u8]) -> u64 {
    let end = pe
        .sections
        .iter()
        .map(|s| u64::from(s.pointer_to_raw_data) + u64::from(s.size_of_raw_data))
        .max()
        .unwrap_or(0);
    (data.len() as u64).saturating_sub(end)
}

fn elf_facts(input: &ScanInput<'_>) -> Result<Value, ScanError> {
    let data = input.data;
    if !data.starts_with(b"\x7fELF") {
        return Ok(json!({"is_elf": false}));
    }
    let elf = Elf::parse(data).map_err(|e| ScanError::Failed(format!("malformed ELF: {e}")))?;
    let mut entropies = Entropies::new(input);
    let sections = elf
        .section_headers
        .iter()
        .filter(|s| s.sh_type != goblin::elf::section_header::SHT_NOBITS)
        .take(LIST_LIMIT)
        .map(|s| {
            Ok(json!({
                "name": elf.shdr_strtab.get_at(s.sh_name).unwrap_or("?"),
                "size": s.sh_size,
                "entropy": entropies.of(s.sh_offset, s.sh_size)?,
            }))
        })
        .collect::<Result<Vec<Value>, ScanError>>()?;
    let dynsym = |import: bool| -> Vec<&str> {
        elf.dynsyms
            .iter()
            .filter(|s| s.is_import() == import && s.st_name != 0)
            .filter_map(|s| elf.dynstrtab.get_at(s.st_name))
            .take(LIST_LIMIT)
            .collect()
    };
    let imports = dynsym(true);
    let exports = dynsym(false);
    let has_symtab = elf
        .section_headers
        .iter()
        .any(|s| s.sh_type == goblin::elf::section_header::SHT_SYMTAB);
    Ok(json!({
        "is_elf": true,
        "class": if elf.is_64 { "ELF64" } else { "ELF32" },
        "machine": goblin::elf::header::machine_to_str(elf.header.e_machine),
        "type": goblin::elf::header::et_to_str(elf.header.e_type),
        "little_endian": elf.little_endian,
        "entry_point": elf.entry,
        "interpreter": elf.interpreter,
        "libraries": elf.libraries,
        "soname": elf.soname,
        "section_count": elf.section_headers.len(),
        "sections": sections,
        "imports": imports,
        "exports": exports,
        "stripped": !has_symtab,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(format: Format, data: &[u8]) -> Result<Value, ScanError> {
        scan_within(format, data, std::time::Duration::from_secs(60))
    }

    fn scan_within(
        format: Format,
        data: &[u8],
        timeout: std::time::Duration,
    ) -> Result<Value, ScanError> {
        let event = trawl_core::PayloadEvent::new_root(
            trawl_core::sha256_hex(data),
            data.len() as u64,
            trawl_core::BlobRef::Inline(Vec::new()),
            trawl_core::SourceInfo {
                kind: trawl_core::SourceKind::Cli,
                sensor: "t".into(),
                path: None,
            },
        );
        let input = ScanInput::new(&event, data, timeout);
        match format {
            Format::Pe => pe_facts(&input),
            Format::Elf => elf_facts(&input),
        }
    }

    fn section<'v>(facts: &'v Value, name: &str) -> &'v Value {
        facts["sections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} section"))
    }

    #[test]
    fn entropy_spans_zero_to_eight_bits() {
        assert_eq!(entropy(&[7; 100]), 0.0);
        let all: Vec<u8> = (0..=255).collect();
        assert!((entropy(&all) - 8.0).abs() < 1e-9);
    }

    #[test]
    fn a_real_elf_is_described() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(exe).unwrap();
        let v = scan(Format::Elf, &data).unwrap();
        assert_eq!(v["is_elf"], true);
        assert_eq!(
            v["class"],
            if cfg!(target_pointer_width = "64") {
                "ELF64"
            } else {
                "ELF32"
            }
        );
        assert!(v["libraries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("libc.so")));
        let text = section(&v, ".text");
        let e = text["entropy"].as_f64().unwrap();
        assert!(e > 4.0 && e < 8.0, "machine code entropy {e}");
        assert!(v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "malloc" || s == "free"));
    }

    #[test]
    fn a_real_pe_is_described() {
        let v = scan(Format::Pe, &crate::samples::windows_launcher()).unwrap();
        assert_eq!(v["is_pe"], true);
        assert_eq!(v["is_64"], true);
        assert_eq!(v["machine"], "X86_64");
        let imports = v["imports"].as_object().unwrap();
        assert!(
            imports
                .keys()
                .any(|dll| dll.eq_ignore_ascii_case("KERNEL32.dll")),
            "{imports:?}"
        );
        assert_eq!(v["imphash"].as_str().unwrap().len(), 32);
        assert!(v["compile_time"].as_str().unwrap().starts_with("20"));
        let text = section(&v, ".text");
        assert!(text["entropy"].as_f64().unwrap() > 4.0);
        assert_eq!(v["signed"], false);
    }

    #[test]
    fn sections_that_all_span_the_file_cost_at_most_two_passes() {
        let elf = crate::samples::overlapping_sections_elf(0xfeff);
        let v = scan(Format::Elf, &elf).unwrap();
        assert_eq!(v["section_count"], 0xfeff);
        let sections = v["sections"].as_array().unwrap();
        assert_eq!(sections.len(), LIST_LIMIT);
        let measured = sections.iter().filter(|s| !s["entropy"].is_null()).count();
        assert_eq!(
            measured, 2,
            "entropy is read for two whole-file sections only"
        );
    }

    #[test]
    fn a_scan_past_its_deadline_stops_inside_its_loop() {
        let elf = crate::samples::overlapping_sections_elf(16);
        let e = scan_within(Format::Elf, &elf, std::time::Duration::ZERO).unwrap_err();
        assert!(matches!(e, ScanError::Timeout(_)), "{e}");
    }

    #[test]
    fn other_formats_are_not_errors_and_broken_ones_are() {
        assert_eq!(scan(Format::Pe, b"%PDF-1.4").unwrap()["is_pe"], false);
        assert_eq!(scan(Format::Elf, b"MZ\x90\0").unwrap()["is_elf"], false);
        // A PE whose header offset points past the end of the file.
        let mut bad = vec![0u8; 64];
        bad[..2].copy_from_slice(b"MZ");
        bad[0x3c..0x40].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
        let e = scan(Format::Pe, &bad).unwrap_err().to_string();
        assert!(e.starts_with("malformed PE"), "{e}");
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(20, 0);
        assert!(scan(Format::Elf, &elf)
            .unwrap_err()
            .to_string()
            .starts_with("malformed ELF"));
    }
}
