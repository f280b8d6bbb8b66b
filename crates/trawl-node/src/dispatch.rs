//! Which payloads a worker group scans (`filter = { … }` in its config).

use trawl_config::WorkerFilter;
use trawl_core::{PayloadEvent, RuleMatch};

/// A worker group's filter, checked cheaply on the event first and on the
/// bytes (their mime type) only when it names mime types.
#[derive(Debug, Clone, Default)]
pub struct Dispatch {
    filter: WorkerFilter,
}

fn mime_matches(pattern: &str, mime: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(family) => mime.split('/').next() == Some(family),
        None => pattern.eq_ignore_ascii_case(mime),
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn wildcard(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Dispatch {
    pub fn new(filter: WorkerFilter) -> Self {
        Dispatch { filter }
    }

    /// The worker group whose YARA matches this group waits for, if any.
    pub fn after_matches_of(&self) -> Option<&str> {
        self.filter.yara.as_ref().map(|y| y.worker.as_str())
    }

    /// Whether a result's rule matches meet `filter.yara` (true when the
    /// filter has no YARA condition).
    pub fn wants_matches(&self, matches: &[RuleMatch]) -> bool {
        let Some(y) = &self.filter.yara else {
            return true;
        };
        matches.iter().any(|m| {
            (y.rules.is_empty() || y.rules.iter().any(|p| wildcard(p, &m.rule)))
                && (y.tags.is_empty() || m.tags.iter().any(|t| y.tags.contains(t)))
        })
    }

    /// Whether the event alone already rules the payload out (or in, when
    /// [`Dispatch::needs_content`] is false).
    pub fn wants_event(&self, event: &PayloadEvent) -> bool {
        let f = &self.filter;
        f.min_size.is_none_or(|m| event.size >= m)
            && f.max_size.is_none_or(|m| event.size <= m)
            && f.max_depth.is_none_or(|d| event.lineage.depth <= d)
            && (f.sources.is_empty() || f.sources.iter().any(|s| s == event.source.kind.as_str()))
    }

    pub fn needs_content(&self) -> bool {
        !self.filter.mime.is_empty()
    }

    /// The mime condition: the type found in the bytes, or the sensor's.
    pub fn wants_content(&self, event: &PayloadEvent, data: &[u8]) -> bool {
        if !self.needs_content() {
            return true;
        }
        let found = trawl_scanners::detect(data).mime;
        let sensor = event.meta.mime.as_deref();
        self.filter
            .mime
            .iter()
            .any(|p| mime_matches(p, found) || sensor.is_some_and(|m| mime_matches(p, m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trawl_core::{BlobRef, SourceInfo, SourceKind};

    fn event(kind: SourceKind, size: u64, depth: u32) -> PayloadEvent {
        let mut e = PayloadEvent::new_root(
            "00".into(),
            size,
            BlobRef::Inline(Vec::new()),
            SourceInfo {
                kind,
                sensor: "s".into(),
                path: None,
            },
        );
        e.lineage.depth = depth;
        e
    }

    #[test]
    fn every_condition_given_must_hold() {
        let d = Dispatch::new(WorkerFilter {
            mime: vec!["image/*".into(), "application/pdf".into()],
            min_size: Some(10),
            max_size: Some(1000),
            sources: vec!["suricata".into(), "extracted".into()],
            max_depth: Some(1),
            yara: None,
        });
        assert!(d.wants_event(&event(SourceKind::Suricata, 100, 0)));
        assert!(!d.wants_event(&event(SourceKind::Zeek, 100, 0)), "source");
        assert!(
            !d.wants_event(&event(SourceKind::Suricata, 5, 0)),
            "too small"
        );
        assert!(
            !d.wants_event(&event(SourceKind::Suricata, 5000, 0)),
            "too large"
        );
        assert!(
            !d.wants_event(&event(SourceKind::Extracted, 100, 2)),
            "too deep"
        );

        let e = event(SourceKind::Suricata, 100, 0);
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert!(d.wants_content(&e, png));
        assert!(d.wants_content(&e, b"%PDF-1.4\n1 0 obj"));
        assert!(
            !d.wants_content(&e, b"MZ\x90\0\x03\0\0\0\x04\0\0\0"),
            "an executable"
        );
        let mut by_sensor = e.clone();
        by_sensor.meta.mime = Some("image/jpeg".into());
        assert!(
            d.wants_content(&by_sensor, b"garbage"),
            "the sensor's type counts too"
        );

        let all = Dispatch::default();
        assert!(all.wants_event(&event(SourceKind::Cli, 0, 9)) && !all.needs_content());
    }

    #[test]
    fn rule_patterns_use_star_wildcards() {
        for (p, n, ok) in [
            ("Packed_*", "Packed_UPX", true),
            ("Packed_*", "packed_UPX", false),
            ("*_exe", "dropper_exe", true),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-c-b", false),
            ("ab*ba", "aba", false),
            ("Exact", "Exact", true),
            ("Exact", "Exactly", false),
            ("*", "", true),
        ] {
            assert_eq!(wildcard(p, n), ok, "{p} on {n}");
        }
    }

    #[test]
    fn a_yara_condition_needs_a_match_with_a_named_rule_and_a_named_tag() {
        let d = |rules: &[&str], tags: &[&str]| {
            Dispatch::new(WorkerFilter {
                yara: Some(trawl_config::YaraCondition {
                    worker: "yara".into(),
                    rules: rules.iter().map(|s| s.to_string()).collect(),
                    tags: tags.iter().map(|s| s.to_string()).collect(),
                }),
                ..WorkerFilter::default()
            })
        };
        let found = [
            RuleMatch::new("Packed_UPX", ["packer"]),
            RuleMatch::new("Is_PE", ["exe", "windows"]),
        ];
        let none = [];
        assert!(d(&[], &[]).wants_matches(&found), "any match");
        assert!(!d(&[], &[]).wants_matches(&none));
        assert!(d(&["Packed_*"], &[]).wants_matches(&found));
        assert!(d(&[], &["windows"]).wants_matches(&found));
        assert!(!d(&[], &["pdf"]).wants_matches(&found));
        assert!(
            !d(&["Packed_*"], &["exe"]).wants_matches(&found),
            "rule and tag must hold for the same match"
        );
        assert!(d(&["Is_*"], &["exe"]).wants_matches(&found));
        assert_eq!(d(&[], &[]).after_matches_of(), Some("yara"));
        assert!(
            Dispatch::default().wants_matches(&none)
                && Dispatch::default().after_matches_of().is_none()
        );
    }
}
