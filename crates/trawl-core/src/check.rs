//! What a decoded event must satisfy before anything acts on it. Events
//! cross the network, so a peer (or anyone who can publish on the server)
//! may send any bytes: ids become scratch-file names and datastore keys,
//! sizes become allocations, and none of that may be steered from outside.

use crate::{BlobRef, PayloadEvent, PayloadSummary, ResultEvent};

/// Deepest archive nesting an id may describe (`.N` suffixes); far past any
/// `max_depth` a worker allows.
const MAX_ID_DEPTH: usize = 64;
/// Largest payload an event may announce (1 TiB): larger sizes are forged.
const MAX_PAYLOAD_SIZE: u64 = 1 << 40;
/// Longest worker, sensor or node name an event may carry.
const MAX_NAME: usize = 256;

/// Why a decoded event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Invalid {
    pub field: &'static str,
    pub why: String,
}

fn invalid(field: &'static str, why: impl Into<String>) -> Invalid {
    Invalid {
        field,
        why: why.into(),
    }
}

/// A payload id: a ULID, then one `.N` per level of unpacking.
fn payload_id(field: &'static str, id: &str) -> Result<(), Invalid> {
    let (ulid, rest) = match (id.get(..26), id.get(26..)) {
        (Some(ulid), Some(rest)) => (ulid, rest),
        _ => ("", ""),
    };
    if ulid::Ulid::from_string(ulid).is_err() {
        return Err(invalid(field, format!("not a ULID: {:?}", shorten(id))));
    }
    if rest.is_empty() {
        return Ok(());
    }
    let parts: Vec<&str> = rest[1..].split('.').collect();
    let well_formed = rest.starts_with('.')
        && parts.len() <= MAX_ID_DEPTH
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit()));
    if well_formed {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("not a ULID with .N suffixes: {:?}", shorten(id)),
        ))
    }
}

fn hex_of(field: &'static str, value: &str, len: usize) -> Result<(), Invalid> {
    if value.len() == len && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("not {len} hex digits: {:?}", shorten(value)),
        ))
    }
}

/// A name that ends up in index names, log lines and headers.
fn name(field: &'static str, value: &str) -> Result<(), Invalid> {
    if value.is_empty() || value.len() > MAX_NAME || value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!(
                "empty, over {MAX_NAME} bytes, or holding control characters: {:?}",
                shorten(value)
            ),
        ));
    }
    Ok(())
}

fn shorten(s: &str) -> &str {
    &s[..s.floor_char_boundary(80)]
}

impl PayloadEvent {
    /// Refuses an event whose ids, sizes or blob reference could be used to
    /// reach outside what a payload may touch. Names and metadata are data
    /// and may hold anything; their consumers escape them.
    pub fn check(&self) -> Result<(), Invalid> {
        payload_id("id", &self.id)?;
        payload_id("lineage.root_id", &self.lineage.root_id)?;
        if let Some(parent) = &self.lineage.parent_id {
            payload_id("lineage.parent_id", parent)?;
        }
        hex_of("sha256", &self.sha256, 64)?;
        if self.size > MAX_PAYLOAD_SIZE {
            return Err(invalid(
                "size",
                format!("{} bytes is past 1 TiB", self.size),
            ));
        }
        match &self.blob {
            BlobRef::Inline(bytes) if bytes.len() as u64 != self.size => Err(invalid(
                "blob",
                format!("{} inline bytes for a size of {}", bytes.len(), self.size),
            )),
            BlobRef::Store(key) if key != &self.sha256 => {
                Err(invalid("blob", "store key is not the payload's sha256"))
            }
            BlobRef::Log { key, .. } if key != &self.sha256 => {
                Err(invalid("blob", "log key is not the payload's sha256"))
            }
            BlobRef::Log { log, parts, .. } => {
                name("blob.log", log)?;
                // Parts are never empty, so a payload has at most one per byte.
                if *parts == 0 || u64::from(*parts) > self.size.max(1) {
                    Err(invalid(
                        "blob.parts",
                        format!("{parts} parts for a size of {}", self.size),
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }?;
        if let Some(replay) = &self.replay_id {
            // It becomes part of subjects and result ids.
            payload_id("replay_id", replay)?;
        }
        name("source.sensor", &self.source.sensor)
    }
}

impl PayloadSummary {
    fn check(&self) -> Result<(), Invalid> {
        payload_id("payload.id", &self.id)?;
        payload_id("payload.root_id", &self.root_id)?;
        if !self.sha256.is_empty() {
            // Files that could not be read carry no hash.
            hex_of("payload.sha256", &self.sha256, 64)?;
        }
        name("payload.sensor", &self.sensor)
    }
}

impl ResultEvent {
    /// Refuses a result whose id, worker or payload reference is malformed.
    pub fn check(&self) -> Result<(), Invalid> {
        hex_of("id", &self.id, 32)?;
        self.payload.check()?;
        name("worker.name", &self.worker.name)?;
        name("worker.version", &self.worker.version)?;
        if let Some(ruleset) = &self.worker.ruleset {
            name("worker.ruleset", ruleset)?;
        }
        if let Some(replay) = &self.replay_id {
            payload_id("replay_id", replay)?;
        }
        if let Some(original) = &self.cached_from {
            hex_of("cached_from", original, 32)?;
        }
        if !self.node.is_empty() {
            name("node", &self.node)?;
        }
        if let Some(event) = &self.payload_event {
            event.check()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ULID: &str = "01HZY3M9W1Q7S8T2V4X6Y8Z0AB";

    #[test]
    fn payload_ids_are_ulids_with_numeric_suffixes() {
        for good in [ULID.to_owned(), format!("{ULID}.0"), format!("{ULID}.3.12")] {
            assert_eq!(payload_id("id", &good), Ok(()), "{good}");
        }
        for bad in [
            String::new(),
            "../x".to_owned(),
            format!("{ULID}/../x"),
            format!("{ULID}."),
            format!("{ULID}..1"),
            format!("{ULID}.1\n-o"),
            format!("{ULID}.a"),
            format!("{ULID}{}", ".1".repeat(65)),
            "01HZY3M9W1Q7S8T2V4X6Y8Z0A\u{e9}".to_owned(),
        ] {
            assert!(payload_id("id", &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_refuse_control_characters() {
        assert!(name("n", "sensor-1").is_ok());
        assert!(name("n", "a\r\nb").is_err());
        assert!(name("n", "a\0").is_err());
        assert!(name("n", "").is_err());
        assert!(name("n", &"x".repeat(300)).is_err());
    }

    #[test]
    fn shorten_cuts_on_a_char_boundary() {
        let s = "é".repeat(60);
        assert_eq!(shorten(&s).len(), 80);
    }
}
