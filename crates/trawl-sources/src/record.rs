//! Typed fields of a sensor's JSON record; a field of another type is absent.

use serde_json::{Map, Value};

pub(crate) fn text(record: &Map<String, Value>, key: &str) -> Option<String> {
    record.get(key).and_then(Value::as_str).map(str::to_owned)
}

pub(crate) fn port(record: &Map<String, Value>, key: &str) -> Option<u16> {
    record
        .get(key)
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
}
