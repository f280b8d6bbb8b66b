//! The wire codec: MessagePack with named fields, so nodes of different
//! versions interoperate (unknown fields are ignored on read). Every decoded
//! event is checked (`check.rs`) before it is handed on.

use serde::{de::DeserializeOwned, Serialize};

use crate::check::Invalid;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("cannot encode event: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode event: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("invalid event: {0}")]
    Invalid(#[from] Invalid),
}

/// An event that crosses the transport.
pub trait Event: Serialize + DeserializeOwned {
    fn check(&self) -> Result<(), Invalid>;
}

impl Event for crate::PayloadEvent {
    fn check(&self) -> Result<(), Invalid> {
        crate::PayloadEvent::check(self)
    }
}

impl Event for crate::ResultEvent {
    fn check(&self) -> Result<(), Invalid> {
        crate::ResultEvent::check(self)
    }
}

pub fn encode<T: Serialize>(event: &T) -> Result<Vec<u8>, WireError> {
    Ok(rmp_serde::to_vec_named(event)?)
}

pub fn decode<T: Event>(bytes: &[u8]) -> Result<T, WireError> {
    let event: T = rmp_serde::from_slice(bytes)?;
    event.check()?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn payload() -> PayloadEvent {
        let mut p = PayloadEvent::new_root(
            "ab".repeat(32),
            3,
            BlobRef::Inline(b"abc".to_vec()),
            SourceInfo {
                kind: SourceKind::Suricata,
                sensor: "s1".into(),
                path: Some("/x/y".into()),
            },
        );
        p.meta.filename = Some("evil.exe".into());
        p.meta.flow = Some(Flow {
            src_ip: Some("10.0.0.1".into()),
            src_port: Some(80),
            ..Flow::default()
        });
        p.meta
            .fields
            .insert("http_host".into(), serde_json::json!("example.org"));
        p
    }

    #[test]
    fn payload_round_trips() {
        let p = payload();
        let back: PayloadEvent = decode(&encode(&p).unwrap()).unwrap();
        assert_eq!(p, back);
    }

    #[test]
    fn result_round_trips_with_nested_json_data() {
        let p = payload();
        let r = ResultEvent::new(
            p.summary(),
            WorkerInfo {
                name: "yara".into(),
                version: "1".into(),
                ruleset: Some("deadbeef".into()),
            },
            Outcome::ok(),
            serde_json::json!({"matches": [{"rule": "X", "tags": ["a"], "n": 1.5, "neg": -3}]}),
            chrono::Utc::now(),
            "node-1",
        );
        let back: ResultEvent = decode(&encode(&r).unwrap()).unwrap();
        assert_eq!(r, back);
    }

    #[test]
    fn encoding_uses_field_names() {
        let bytes = encode(&payload()).unwrap();
        let as_map: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
            rmp_serde::from_slice(&bytes).unwrap();
        assert!(as_map.contains_key("sha256"));
        assert!(as_map.contains_key("lineage"));
        assert!(as_map.contains_key("v"));
    }

    #[test]
    fn unknown_fields_from_newer_nodes_are_ignored() {
        #[derive(Serialize)]
        struct Newer<'a> {
            #[serde(flatten)]
            inner: &'a PayloadEvent,
            shiny_new_field: u32,
        }
        let p = payload();
        let bytes = encode(&Newer {
            inner: &p,
            shiny_new_field: 7,
        })
        .unwrap();
        let back: PayloadEvent = decode(&bytes).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn an_event_with_a_path_for_an_id_is_refused() {
        let mut p = payload();
        p.id = "../../etc/x".into();
        let e = decode::<PayloadEvent>(&encode(&p).unwrap()).unwrap_err();
        assert!(
            matches!(e, WireError::Invalid(ref i) if i.field == "id"),
            "{e}"
        );
        let mut p = payload();
        p.size = 4;
        let e = decode::<PayloadEvent>(&encode(&p).unwrap()).unwrap_err();
        assert!(
            matches!(e, WireError::Invalid(ref i) if i.field == "blob"),
            "{e}"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<PayloadEvent>(b"\xc1\xff garbage").is_err());
        assert!(decode::<ResultEvent>(&[]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)
        ) {
            let _ = decode::<PayloadEvent>(&bytes);
            let _ = decode::<ResultEvent>(&bytes);
        }

        #[test]
        fn damaged_events_never_panic_the_decoder(
            damage in proptest::collection::vec(
                (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()),
                1..16,
            )
        ) {
            let mut bytes = encode(&payload()).unwrap();
            for (at, b) in damage {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            let _ = decode::<PayloadEvent>(&bytes);
        }
    }
}
