//! Suricata's file names and metadata records, parsed without IO.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};
use trawl_core::{Flow, PayloadMeta};

/// A v2 sidecar's parts: `<sha256>.<secs>.<id>.json`.
pub(super) fn sidecar_sha(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".json")?;
    let mut parts = stem.splitn(3, '.');
    let sha = parts.next()?;
    let numeric =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    (is_sha256(sha) && numeric(parts.next()) && numeric(parts.next())).then_some(sha)
}

pub(super) fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The payload metadata of an eve `fileinfo` record or a v2 sidecar (the
/// same JSON): flow keys become the flow, `fileinfo` gives the filename and
/// hashes, and everything else (app-layer objects, state, timestamps) is
/// kept as fields.
pub(crate) fn fileinfo_meta(record: &Map<String, Value>) -> PayloadMeta {
    let s = |k: &str| crate::record::text(record, k);
    let port = |k: &str| crate::record::port(record, k);
    let flow = Flow {
        src_ip: s("src_ip"),
        src_port: port("src_port"),
        dest_ip: s("dest_ip"),
        dest_port: port("dest_port"),
        proto: s("proto"),
        app_proto: s("app_proto"),
    };
    let info = record.get("fileinfo").and_then(Value::as_object);
    let info_str = |k: &str| {
        info.and_then(|i| i.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let hashes: BTreeMap<String, String> = ["md5", "sha1", "sha256"]
        .into_iter()
        .filter_map(|h| info_str(h).map(|v| (h.to_owned(), v)))
        .collect();
    let flow_keys = [
        "src_ip",
        "src_port",
        "dest_ip",
        "dest_port",
        "proto",
        "app_proto",
        "event_type",
    ];
    let fields = record
        .iter()
        .filter(|(k, _)| !flow_keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    PayloadMeta {
        filename: info_str("filename"),
        mime: None,
        hashes,
        flow: (flow != Flow::default()).then_some(flow),
        fields,
    }
}

/// The payload metadata of a v1 `file.N.meta` (`KEY:` padded to a column).
pub(super) fn v1_meta(text: &str) -> PayloadMeta {
    let kv: HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(_, v)| !v.is_empty() && *v != "<unknown>")
        .collect();
    let get = |k: &str| kv.get(k).map(|v| (*v).to_owned());
    let port = |k: &str| kv.get(k).and_then(|v| v.parse().ok());
    let proto = kv.get("PROTO").map(|p| match *p {
        "6" => "TCP".to_owned(),
        "17" => "UDP".to_owned(),
        "1" => "ICMP".to_owned(),
        other => other.to_owned(),
    });
    let flow = Flow {
        src_ip: get("SRC IP"),
        src_port: port("SRC PORT"),
        dest_ip: get("DST IP"),
        dest_port: port("DST PORT"),
        proto,
        app_proto: get("APP PROTO"),
    };
    let group = |pairs: &[(&str, &str)]| -> Option<Value> {
        let m: Map<String, Value> = pairs
            .iter()
            .filter_map(|(key, field)| kv.get(key).map(|v| ((*field).to_owned(), Value::from(*v))))
            .collect();
        (!m.is_empty()).then_some(Value::Object(m))
    };
    let mut fields = BTreeMap::new();
    let groups = [
        (
            "http",
            group(&[
                ("HTTP URI", "url"),
                ("HTTP HOST", "hostname"),
                ("HTTP REFERER", "http_refer"),
                ("HTTP USER AGENT", "http_user_agent"),
            ]),
        ),
        (
            "smtp",
            group(&[("MESSAGE-ID", "message_id"), ("SENDER", "sender")]),
        ),
        (
            "fileinfo",
            group(&[("MAGIC", "magic"), ("STATE", "state"), ("SIZE", "size")]),
        ),
    ];
    for (name, value) in groups {
        if let Some(v) = value {
            fields.insert(name.to_owned(), v);
        }
    }
    if let Some(t) = get("TIME") {
        fields.insert("timestamp".to_owned(), Value::from(t));
    }
    let hashes = [("MD5", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256")]
        .into_iter()
        .filter_map(|(k, h)| get(k).map(|v| (h.to_owned(), v.to_ascii_lowercase())))
        .collect();
    PayloadMeta {
        filename: get("FILENAME"),
        mime: None,
        hashes,
        flow: (flow != Flow::default()).then_some(flow),
        fields,
    }
}
