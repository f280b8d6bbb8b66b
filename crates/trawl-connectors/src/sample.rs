//! Results shaped like those of a file carved by a sensor, for measuring and
//! testing datastores without running scans.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use trawl_core::{Flow, Outcome, PayloadSummary, ResultEvent, RuleMatch, SourceKind, WorkerInfo};

/// Worker `worker`'s result `data` for file number `n`: payload id the
/// ULID `01J…{n}`, sha256 `{n:064x}`, `file{n}.bin` sent by
/// 192.0.2.(n % 250 + 1):80 over HTTP from `host{n}.example`. It passes the
/// checks every result read from a transport goes through.
pub fn carved_result(n: u32, worker: &str, data: Value) -> ResultEvent {
    // Crockford's base32 holds the decimal digits.
    let id = format!("01J{n:023}");
    let mut fields = BTreeMap::new();
    fields.insert(
        "http".into(),
        json!({"hostname": format!("host{n}.example"), "url": "/download/file.bin", "http_user_agent": "curl/8.5"}),
    );
    ResultEvent::new(
        PayloadSummary {
            id: id.clone(),
            sha256: format!("{n:064x}"),
            size: 4096 + u64::from(n),
            filename: Some(format!("file{n}.bin")),
            mime: None,
            source_kind: SourceKind::Suricata,
            sensor: "sensor-1".into(),
            path: Some(format!("/var/log/suricata/filestore/{n}")),
            flow: Some(Flow {
                src_ip: Some(format!("192.0.2.{}", n % 250 + 1)),
                src_port: Some(80),
                dest_ip: Some("10.1.2.3".into()),
                dest_port: Some(50000),
                proto: Some("TCP".into()),
                app_proto: Some("http".into()),
            }),
            fields,
            root_id: id,
            depth: 0,
        },
        WorkerInfo::new(worker, "1"),
        Outcome::ok(),
        data,
        chrono::Utc::now(),
        "node-1",
    )
}

/// Worker `worker`'s result for file number `n` (as [`carved_result`])
/// with one rule match, in both the typed list and the report.
pub fn matched_result(n: u32, worker: &str, rule: &str, tags: &[&str]) -> ResultEvent {
    let report = json!({"match_count": 1, "matches": [{"rule": rule, "tags": tags}]});
    let mut result = carved_result(n, worker, report);
    result.matches = vec![RuleMatch::new(rule, tags.iter().copied())];
    result
}

#[cfg(test)]
mod tests {
    use trawl_core::{wire, ResultEvent};

    /// `trawl bench-store` sends them through a transport, which sets aside
    /// every result that fails its checks.
    #[test]
    fn sample_results_pass_the_checks_of_a_result_read_from_a_transport() {
        for n in [0, 7, u32::MAX] {
            let sent = super::matched_result(n, "yara", "Rule", &["tag"]);
            let read: ResultEvent = wire::decode(&wire::encode(&sent).unwrap())
                .unwrap_or_else(|e| panic!("result {n}: {e}"));
            assert_eq!(read.payload.id, sent.payload.id);
        }
    }
}
