//! File type from content (magic bytes), never from the name.

use std::sync::Arc;

use serde_json::json;
use trawl_config::{BuildError, ConfigError, WorkerConfig};
use trawl_core::{ScanError, ScanInput, ScanOutput, Scanner, WorkerInfo};

use crate::factory::{NoParams, ScannerFactory};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileType {
    pub mime: &'static str,
    pub description: String,
    /// The usual extension, without the dot; empty when there is none.
    pub extension: &'static str,
}

/// How far into a payload the text sniffing looks.
const TEXT_SNIFF: usize = 8 * 1024;

/// Payloads scanned on the caller's thread (see [`Scanner::inline_up_to`]).
const INLINE_UP_TO: usize = 16 * 1024;

pub fn detect(data: &[u8]) -> FileType {
    if data.is_empty() {
        return FileType {
            mime: "application/x-empty",
            description: "empty".into(),
            extension: "",
        };
    }
    if let Some(t) = infer::get(data) {
        return FileType {
            mime: t.mime_type(),
            description: describe(t.mime_type(), t.matcher_type(), t.extension()),
            extension: t.extension(),
        };
    }
    if let Some(kind) = sniff_text(data) {
        return kind;
    }
    FileType {
        mime: "application/octet-stream",
        description: "data".into(),
        extension: "",
    }
}

fn describe(mime: &str, matcher: infer::MatcherType, ext: &str) -> String {
    let known = match mime {
        "application/vnd.microsoft.portable-executable" => "PE executable (Windows)",
        "application/x-executable" => "ELF executable",
        "application/x-mach-binary" => "Mach-O executable",
        "application/java-archive" => "Java archive",
        "application/vnd.android.dex" => "Android Dalvik executable",
        "application/zip" => "Zip archive",
        "application/gzip" => "gzip compressed data",
        "application/x-tar" => "POSIX tar archive",
        "application/x-7z-compressed" => "7-zip archive",
        "application/vnd.rar" | "application/x-rar-compressed" => "RAR archive",
        "application/x-bzip2" => "bzip2 compressed data",
        "application/x-xz" => "XZ compressed data",
        "application/pdf" => "PDF document",
        "application/rtf" => "Rich Text Format document",
        "application/msword" | "application/x-ole-storage" => "Microsoft OLE2 compound document",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => {
            "Microsoft Word document (OOXML)"
        }
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => {
            "Microsoft Excel spreadsheet (OOXML)"
        }
        "application/vnd.openxmlformats-officedocument.presentationml.presentation" => {
            "Microsoft PowerPoint presentation (OOXML)"
        }
        "application/x-shockwave-flash" => "Adobe Flash (SWF)",
        "image/jpeg" => "JPEG image",
        "image/png" => "PNG image",
        "image/gif" => "GIF image",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_owned();
    }
    let group = match matcher {
        infer::MatcherType::App => "application",
        infer::MatcherType::Archive => "archive",
        infer::MatcherType::Audio => "audio",
        infer::MatcherType::Book => "e-book",
        infer::MatcherType::Doc => "document",
        infer::MatcherType::Font => "font",
        infer::MatcherType::Image => "image",
        infer::MatcherType::Text => "text",
        infer::MatcherType::Video => "video",
        infer::MatcherType::Custom => "data",
    };
    format!("{} {group}", ext.to_uppercase())
}

fn sniff_text(data: &[u8]) -> Option<FileType> {
    let head = &data[..data.len().min(TEXT_SNIFF)];
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        // A character cut by the sniff window is still text.
        Err(e) => e.error_len().is_none() && head.len() == TEXT_SNIFF,
    };
    let control = head
        .iter()
        .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c | 0x1b));
    if !valid || control {
        return None;
    }
    let start = String::from_utf8_lossy(&head[..head.len().min(256)])
        .trim_start_matches('\u{feff}')
        .trim_start()
        .to_ascii_lowercase();
    let (mime, description, extension) = if start.starts_with("#!") {
        ("text/x-shellscript", "script text (#!)", "sh")
    } else if start.starts_with("<?xml") {
        ("text/xml", "XML document", "xml")
    } else if start.starts_with("<!doctype html") || start.starts_with("<html") {
        ("text/html", "HTML document", "html")
    } else if start.starts_with('{') || start.starts_with('[') {
        ("application/json", "JSON text", "json")
    } else {
        ("text/plain", "text", "txt")
    };
    Some(FileType {
        mime,
        description: description.into(),
        extension,
    })
}

pub(crate) struct FiletypeFactory;

impl ScannerFactory for FiletypeFactory {
    fn check(&self, config: &WorkerConfig) -> Result<(), ConfigError> {
        config.component.params::<NoParams>().map(|_| ())
    }

    fn build(&self, config: &WorkerConfig) -> Result<Arc<dyn Scanner>, BuildError> {
        self.check(config)?;
        Ok(Arc::new(FiletypeScanner {
            info: WorkerInfo::new(config.component.name.clone(), "filetype-1"),
        }))
    }
}

struct FiletypeScanner {
    info: WorkerInfo,
}

impl Scanner for FiletypeScanner {
    fn info(&self) -> WorkerInfo {
        self.info.clone()
    }

    fn scan(&self, input: &ScanInput<'_>) -> Result<ScanOutput, ScanError> {
        let t = detect(input.data);
        Ok(ScanOutput::findings(json!({
            "mime": t.mime,
            "description": t.description,
            "extension": t.extension,
        })))
    }

    fn inline_up_to(&self) -> usize {
        // Magic numbers and a text sniff: microseconds at this size.
        INLINE_UP_TO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_content() {
        assert_eq!(detect(b"").mime, "application/x-empty");
        assert_eq!(
            detect(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n").mime,
            "application/pdf"
        );
        let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
        elf.resize(64, 0);
        elf[16] = 2;
        assert_eq!(detect(&elf).description, "ELF executable");
        assert_eq!(
            detect(b"PK\x03\x04\x14\x00\x00\x00").mime,
            "application/zip"
        );
        assert_eq!(detect(b"hello world\n").mime, "text/plain");
        assert_eq!(detect(b"#!/bin/sh\necho hi\n").mime, "text/x-shellscript");
        assert_eq!(detect(b"  <!DOCTYPE html><html>").mime, "text/html");
        assert_eq!(
            detect(b"\x00\x01\x02\x03binary").mime,
            "application/octet-stream"
        );
    }

    #[test]
    fn utf8_cut_at_the_sniff_window_is_still_text() {
        let mut data = "é".repeat(TEXT_SNIFF);
        data.push('x');
        assert_eq!(detect(data.as_bytes()).mime, "text/plain");
    }
}
