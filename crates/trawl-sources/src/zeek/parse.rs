//! Zeek's logs and file names, parsed without IO: files.log in TSV (with
//! its `#` header and escapes) or JSON lines, and `extract-…` names.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};
use trawl_core::{Flow, PayloadMeta};

/// Zeek's TSV conventions, from the `#` lines at the top of a log.
#[derive(Debug, Clone)]
pub(super) struct TsvHeader {
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
    pub(super) fn update(header: &mut Option<TsvHeader>, line: &[u8]) {
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

    pub(super) fn parse(&self, line: &[u8]) -> Result<Map<String, Value>, String> {
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
pub(super) fn files_log_meta(record: &Map<String, Value>) -> PayloadMeta {
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
pub(super) fn name_meta(path: &Path) -> PayloadMeta {
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
