//! The search document of a result, shared by the Elasticsearch and MongoDB
//! connectors. Field names follow the Elastic Common Schema where one exists
//! (`file.hash.sha256`, `source.ip`, `url.domain`, `rule.name`…) so Kibana
//! and SIEM users find them where they expect; everything trawl-specific is
//! under `trawl`. The worker's findings (`trawl.data`) and the sensor's raw
//! fields (`trawl.sensor_fields`) are kept whole but not indexed; what
//! analysts search is lifted into typed ECS fields.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};
use trawl_core::{OutcomeStatus, ResultEvent};

/// Where an index or collection name comes from: `{worker}` and the date of
/// the result (`{yyyy.MM.dd}`, `{yyyy.MM}`, `{yyyy}`).
pub(crate) fn target_name(pattern: &str, r: &ResultEvent) -> String {
    let t = r.started_at;
    pattern
        .replace("{worker}", &r.worker.name)
        .replace("{yyyy.MM.dd}", &t.format("%Y.%m.%d").to_string())
        .replace("{yyyy.MM}", &t.format("%Y.%m").to_string())
        .replace("{yyyy}", &t.format("%Y").to_string())
        .to_lowercase()
}

/// The placeholders a name pattern may use, for config checks.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {pattern:?}"))?;
        let token = &rest[open..open + close + 1];
        if !["{worker}", "{yyyy.MM.dd}", "{yyyy.MM}", "{yyyy}"].contains(&token) {
            return Err(format!(
                "unknown placeholder {token} in {pattern:?} (use {{worker}}, {{yyyy.MM.dd}}, {{yyyy.MM}} or {{yyyy}})"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}

fn put(obj: &mut Map<String, Value>, path: &str, value: Value) {
    if value.is_null() {
        return;
    }
    let mut cur = obj;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_owned(), value);
            return;
        }
        let next = cur
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        cur = next.as_object_mut().expect("made an object above");
    }
}

fn outcome(status: OutcomeStatus) -> &'static str {
    match status {
        OutcomeStatus::Ok => "success",
        OutcomeStatus::Skipped => "unknown",
        OutcomeStatus::Error | OutcomeStatus::Timeout => "failure",
    }
}

/// The fields every document has, trimmed or not.
fn core(r: &ResultEvent) -> Map<String, Value> {
    let p = &r.payload;
    let mut d = Map::new();
    put(&mut d, "@timestamp", json!(r.started_at.to_rfc3339()));
    put(&mut d, "event.kind", json!("event"));
    put(&mut d, "event.module", json!("trawl"));
    put(
        &mut d,
        "event.dataset",
        json!(format!("trawl.{}", r.worker.name)),
    );
    put(&mut d, "event.outcome", json!(outcome(r.outcome.status)));
    put(
        &mut d,
        "event.duration",
        json!(r.duration_ms.saturating_mul(1_000_000)),
    );
    put(&mut d, "file.name", json!(p.filename));
    put(&mut d, "file.path", json!(p.path));
    put(&mut d, "file.size", json!(p.size));
    put(&mut d, "file.mime_type", json!(p.mime));
    if !p.sha256.is_empty() {
        put(&mut d, "file.hash.sha256", json!(p.sha256));
    }
    put(&mut d, "observer.name", json!(p.sensor));
    put(&mut d, "observer.type", json!(p.source_kind.as_str()));
    if let Some(f) = &p.flow {
        put(&mut d, "source.ip", json!(f.src_ip));
        put(&mut d, "source.port", json!(f.src_port));
        put(&mut d, "destination.ip", json!(f.dest_ip));
        put(&mut d, "destination.port", json!(f.dest_port));
        put(
            &mut d,
            "network.transport",
            json!(f.proto.as_ref().map(|p| p.to_lowercase())),
        );
        put(&mut d, "network.protocol", json!(f.app_proto));
    }
    put(&mut d, "error.message", json!(r.outcome.message));
    put(&mut d, "trawl.result_id", json!(r.id));
    put(&mut d, "trawl.payload_id", json!(p.id));
    put(&mut d, "trawl.root_id", json!(p.root_id));
    put(&mut d, "trawl.depth", json!(p.depth));
    put(&mut d, "trawl.worker", json!(r.worker.name));
    put(&mut d, "trawl.worker_version", json!(r.worker.version));
    put(&mut d, "trawl.ruleset", json!(r.worker.ruleset));
    put(&mut d, "trawl.outcome", json!(r.outcome.status.as_str()));
    put(&mut d, "trawl.node", json!(r.node));
    put(&mut d, "trawl.replay_id", json!(r.replay_id));
    put(&mut d, "trawl.cached_from", json!(r.cached_from));
    put(&mut d, "trawl.replay.new_matches", json!(r.new_matches));
    d
}

/// The full document of a result.
pub(crate) fn document(r: &ResultEvent) -> Value {
    let mut d = core(r);
    let fields = &r.payload.fields;
    let http = fields.get("http");
    let at = |v: Option<&Value>, k: &str| v.and_then(|o| o.get(k)).cloned().unwrap_or(Value::Null);
    put(&mut d, "url.domain", at(http, "hostname"));
    put(&mut d, "url.original", at(http, "url"));
    put(&mut d, "user_agent.original", at(http, "http_user_agent"));
    put(&mut d, "http.request.method", at(http, "http_method"));
    put(&mut d, "http.response.status_code", at(http, "status"));
    let email = fields.get("email");
    put(&mut d, "email.from.address", at(email, "from"));
    put(&mut d, "email.to.address", at(email, "to"));

    let data = &r.data;
    for h in ["md5", "sha1", "sha512", "ssdeep", "tlsh"] {
        put(
            &mut d,
            &format!("file.hash.{h}"),
            data.get(h).cloned().unwrap_or(Value::Null),
        );
    }
    if r.worker.name == "filetype" || data.get("description").is_some() {
        if let Some(mime) = data.get("mime") {
            put(&mut d, "file.mime_type", mime.clone());
        }
    }
    if !r.matches.is_empty() {
        let names: Vec<&str> = r.matches.iter().map(|m| m.rule.as_str()).collect();
        let tags: BTreeSet<&str> = r
            .matches
            .iter()
            .flat_map(|m| &m.tags)
            .map(String::as_str)
            .collect();
        put(&mut d, "rule.name", json!(names));
        if !tags.is_empty() {
            put(&mut d, "tags", json!(tags));
        }
    }
    put(&mut d, "trawl.data", data.clone());
    if !fields.is_empty() {
        put(&mut d, "trawl.sensor_fields", json!(fields));
    }
    Value::Object(d)
}

/// A result's document as JSON and as text, or its error document when the
/// text is over `max_bytes` (a connector's `max_document_bytes`).
pub(crate) fn bounded_document(
    connector: &str,
    r: &ResultEvent,
    max_bytes: usize,
) -> (Value, String) {
    let json = document(r);
    let text = json.to_string();
    if text.len() <= max_bytes {
        return (json, text);
    }
    let reason = format!(
        "document of {} bytes is over max_document_bytes ({max_bytes}); findings dropped",
        text.len()
    );
    tracing::warn!(%connector, result = %r.id, %reason, "trimmed");
    let error = error_document(r, &reason);
    let text = error.to_string();
    (error, text)
}

/// What is stored instead of a document the datastore refused or that is
/// too large: the result's identity and why, so nothing disappears silently.
pub(crate) fn error_document(r: &ResultEvent, reason: &str) -> Value {
    let mut d = core(r);
    // The flow may be what was refused (e.g. an address that is not an IP).
    for k in ["source", "destination", "network"] {
        d.remove(k);
    }
    put(&mut d, "trawl.trimmed", json!(true));
    put(&mut d, "trawl.store_error", json!(reason));
    put(&mut d, "event.outcome", json!("failure"));
    Value::Object(d)
}

/// Index template mappings (Elasticsearch / OpenSearch) for [`document`].
pub(crate) fn mappings() -> Value {
    let kw = json!({"type": "keyword"});
    let ip = json!({"type": "ip"});
    let long = json!({"type": "long"});
    let port = json!({"type": "integer"});
    json!({
        "dynamic": false,
        "properties": {
            "@timestamp": {"type": "date"},
            "event": {"properties": {
                "kind": kw, "module": kw, "dataset": kw, "outcome": kw, "duration": long,
            }},
            "file": {"properties": {
                "name": {"type": "keyword", "fields": {"text": {"type": "text"}}},
                "path": kw, "size": long, "mime_type": kw,
                "hash": {"properties": {
                    "md5": kw, "sha1": kw, "sha256": kw, "sha512": kw, "ssdeep": kw, "tlsh": kw,
                }},
            }},
            "observer": {"properties": {"name": kw, "type": kw}},
            "source": {"properties": {"ip": ip, "port": port}},
            "destination": {"properties": {"ip": ip, "port": port}},
            "network": {"properties": {"transport": kw, "protocol": kw}},
            "url": {"properties": {"domain": kw, "original": {"type": "keyword", "fields": {"text": {"type": "text"}}}}},
            "user_agent": {"properties": {"original": kw}},
            "http": {"properties": {
                "request": {"properties": {"method": kw}},
                "response": {"properties": {"status_code": long}},
            }},
            "email": {"properties": {
                "from": {"properties": {"address": kw}},
                "to": {"properties": {"address": kw}},
            }},
            "rule": {"properties": {"name": kw}},
            "tags": kw,
            "error": {"properties": {"message": {"type": "text"}}},
            "trawl": {"properties": {
                "result_id": kw, "payload_id": kw, "root_id": kw, "depth": {"type": "integer"},
                "worker": kw, "worker_version": kw, "ruleset": kw, "outcome": kw, "node": kw,
                "replay_id": kw, "cached_from": kw, "replay": {"properties": {"new_matches": kw}}, "trimmed": {"type": "boolean"}, "store_error": {"type": "text"},
                "data": {"type": "object", "enabled": false},
                "sensor_fields": {"type": "object", "enabled": false},
            }},
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use trawl_core::RuleMatch;

    fn result(worker: &str, data: Value) -> ResultEvent {
        crate::sample::carved_result(6, worker, data)
    }

    #[test]
    fn documents_put_findings_where_ecs_users_look() {
        let mut yara = result(
            "yara",
            json!({"matches": [{"rule": "Eicar", "tags": ["av", "test"]}, {"rule": "Other", "tags": ["av"]}]}),
        );
        yara.matches = vec![
            RuleMatch::new("Eicar", ["av", "test"]),
            RuleMatch::new("Other", ["av"]),
        ];
        let d = document(&yara);
        assert_eq!(d["file"]["hash"]["sha256"], format!("{:064x}", 6));
        assert_eq!(d["source"]["ip"], "192.0.2.7");
        assert_eq!(d["network"]["transport"], "tcp");
        assert_eq!(d["url"]["domain"], "host6.example");
        assert_eq!(d["rule"]["name"], json!(["Eicar", "Other"]));
        assert_eq!(d["tags"], json!(["av", "test"]));
        assert_eq!(d["event"]["dataset"], "trawl.yara");
        assert_eq!(d["trawl"]["result_id"], yara.id.as_str());

        let hash = document(&result("hash", json!({"md5": "m", "ssdeep": "3:a:b"})));
        assert_eq!(hash["file"]["hash"]["md5"], "m");
        assert_eq!(hash["file"]["hash"]["ssdeep"], "3:a:b");

        let e = error_document(&yara, "too large");
        assert!(e.get("source").is_none() && e["trawl"].get("data").is_none());
        assert_eq!(e["trawl"]["store_error"], "too large");
    }

    #[test]
    fn replay_and_copy_provenance_is_stored_and_mapped() {
        let mut r = result("yara", json!({}));
        r.replay_id = Some("01J0000000000000000000000A".into());
        r.new_matches = Some(vec!["New".into()]);
        r.cached_from = Some("ab".repeat(16));
        let d = document(&r);
        assert_eq!(d["trawl"]["replay"]["new_matches"], json!(["New"]));
        assert_eq!(d["trawl"]["replay_id"], "01J0000000000000000000000A");
        assert_eq!(d["trawl"]["cached_from"], "ab".repeat(16));
        for field in [
            "trawl.replay.new_matches",
            "trawl.replay_id",
            "trawl.cached_from",
        ] {
            assert_eq!(mapped_type(field).as_deref(), Some("keyword"), "{field}");
        }
    }

    /// The type `mappings()` gives a dotted field, if any.
    fn mapped_type(path: &str) -> Option<String> {
        let mut node = mappings();
        for part in path.split('.') {
            node = node["properties"].get(part)?.clone();
        }
        node["type"].as_str().map(str::to_owned)
    }

    #[test]
    fn kibana_saved_objects_use_fields_the_template_maps() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/kibana/trawl.ndjson"
        );
        let objects: Vec<Value> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let ids: Vec<&str> = objects.iter().map(|o| o["id"].as_str().unwrap()).collect();
        let mut fields = Vec::new();
        for o in &objects {
            for r in o["references"].as_array().unwrap() {
                assert!(
                    ids.contains(&r["id"].as_str().unwrap()),
                    "dangling reference {r}"
                );
            }
            if o["type"] == "visualization" {
                let state: Value =
                    serde_json::from_str(o["attributes"]["visState"].as_str().unwrap()).unwrap();
                for agg in state["aggs"].as_array().unwrap() {
                    if let Some(f) = agg["params"]["field"].as_str() {
                        fields.push(f.to_owned());
                    }
                }
            }
        }
        assert!(fields.len() >= 5, "{fields:?}");
        for f in fields {
            let ty = mapped_type(&f).unwrap_or_else(|| panic!("{f} is not in the template"));
            assert!(
                ["keyword", "date", "ip"].contains(&ty.as_str()),
                "{f} is {ty}: not aggregatable"
            );
        }
        let dv = objects
            .iter()
            .find(|o| o["type"] == "index-pattern")
            .unwrap();
        assert_eq!(dv["attributes"]["title"], "trawl-*");
        assert_eq!(mapped_type("@timestamp").as_deref(), Some("date"));
    }

    #[test]
    fn names_come_from_the_pattern() {
        let r = result("YARA", Value::Null);
        assert_eq!(target_name("trawl-{worker}", &r), "trawl-yara");
        let dated = target_name("trawl-{worker}-{yyyy.MM.dd}", &r);
        assert_eq!(
            dated,
            format!("trawl-yara-{}", r.started_at.format("%Y.%m.%d"))
        );
        assert!(check_pattern("trawl-{worker}-{yyyy.MM}").is_ok());
        assert!(check_pattern("trawl-{host}")
            .unwrap_err()
            .contains("{host}"));
        assert!(check_pattern("trawl-{worker")
            .unwrap_err()
            .contains("unclosed"));
    }
}
