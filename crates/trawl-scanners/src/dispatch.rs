//! Which payloads a worker group scans (`filter = { … }` in its config).

use trawl_config::DispatchFilter;
use trawl_core::PayloadEvent;

/// A worker group's filter, checked cheaply on the event first and on the
/// bytes (their mime type) only when it names mime types.
#[derive(Debug, Clone, Default)]
pub struct Dispatch {
    filter: DispatchFilter,
}

fn mime_matches(pattern: &str, mime: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(family) => mime.split('/').next() == Some(family),
        None => pattern.eq_ignore_ascii_case(mime),
    }
}

impl Dispatch {
    pub fn new(filter: DispatchFilter) -> Self {
        Dispatch { filter }
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
        let found = crate::filetype::detect(data).mime;
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
        let d = Dispatch::new(DispatchFilter {
            mime: vec!["image/*".into(), "application/pdf".into()],
            min_size: Some(10),
            max_size: Some(1000),
            sources: vec!["suricata".into(), "extracted".into()],
            max_depth: Some(1),
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
}
