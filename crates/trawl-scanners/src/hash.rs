//! md5, sha1, sha256, sha512 and ssdeep, computed in one pass over the bytes.

use std::sync::Arc;

use md5::Md5;
use serde_json::json;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use trawl_config::{BuildError, ConfigError, WorkerConfig};
use trawl_core::{ScanError, ScanInput, ScanOutput, Scanner, WorkerInfo};

use crate::factory::{NoParams, ScannerFactory};

pub(crate) struct HashFactory;

impl ScannerFactory for HashFactory {
    fn check(&self, config: &WorkerConfig) -> Result<(), ConfigError> {
        config.component.params::<NoParams>().map(|_| ())
    }

    fn build(&self, config: &WorkerConfig) -> Result<Arc<dyn Scanner>, BuildError> {
        self.check(config)?;
        Ok(Arc::new(HashScanner {
            info: WorkerInfo::new(config.component.name.clone(), "hash-1"),
        }))
    }
}

struct HashScanner {
    info: WorkerInfo,
}

/// Chunks small enough to stay in cache while every digest reads them.
const CHUNK: usize = 64 * 1024;
/// The deadline is looked at once per this many chunks (16 MiB).
const CHUNKS_PER_CHECK: usize = 256;

impl Scanner for HashScanner {
    fn info(&self) -> WorkerInfo {
        self.info.clone()
    }

    fn scan(&self, input: &ScanInput<'_>) -> Result<ScanOutput, ScanError> {
        // The payload's bytes are addressed by the sha256 its source computed
        // over them; a well-formed one is not computed again.
        let known = &input.event.sha256;
        let sha256 = (known.len() == 64 && known.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| known.to_ascii_lowercase());
        digests(input.data, sha256, || input.overdue()).map(ScanOutput::findings)
    }
}

fn digests(
    data: &[u8],
    known_sha256: Option<String>,
    overdue: impl Fn() -> Result<(), ScanError>,
) -> Result<serde_json::Value, ScanError> {
    let (mut md5, mut sha1, mut sha512) = (Md5::new(), Sha1::new(), Sha512::new());
    let mut sha256 = known_sha256.is_none().then(Sha256::new);
    #[cfg(feature = "ssdeep")]
    let mut fuzzy = ssdeep::Generator::new();
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        if i % CHUNKS_PER_CHECK == CHUNKS_PER_CHECK - 1 {
            overdue()?;
        }
        md5.update(chunk);
        sha1.update(chunk);
        if let Some(h) = sha256.as_mut() {
            h.update(chunk);
        }
        sha512.update(chunk);
        #[cfg(feature = "ssdeep")]
        fuzzy.update(chunk);
    }
    #[cfg_attr(not(feature = "ssdeep"), allow(unused_mut))]
    let mut out = json!({
        "md5": hex::encode(md5.finalize()),
        "sha1": hex::encode(sha1.finalize()),
        "sha256": known_sha256.unwrap_or_else(|| hex::encode(sha256.expect("computed").finalize())),
        "sha512": hex::encode(sha512.finalize()),
    });
    #[cfg(feature = "ssdeep")]
    if let Ok(h) = fuzzy.finalize() {
        out["ssdeep"] = json!(h.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests_of(data: &[u8], known_sha256: Option<String>) -> serde_json::Value {
        digests(data, known_sha256, || Ok(())).unwrap()
    }

    #[test]
    fn a_large_payload_stops_at_its_deadline() {
        let data = vec![7u8; CHUNK * CHUNKS_PER_CHECK * 2];
        let late = || Err(ScanError::Timeout(std::time::Duration::ZERO));
        assert!(matches!(
            digests(&data, None, late),
            Err(ScanError::Timeout(_))
        ));
    }

    #[test]
    fn known_vectors() {
        let d = digests_of(b"abc", None);
        assert_eq!(d["md5"], "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(d["sha1"], "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            d["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(d["sha512"]
            .as_str()
            .unwrap()
            .starts_with("ddaf35a193617aba"));
    }

    #[test]
    fn chunking_does_not_change_digests() {
        let data: Vec<u8> = (0..(CHUNK * 3 + 17))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let d = digests_of(&data, None);
        assert_eq!(d["sha256"], trawl_core::sha256_hex(&data));
        let known = digests_of(&data, Some(trawl_core::sha256_hex(&data)));
        assert_eq!(known, d);
    }

    #[cfg(feature = "ssdeep")]
    #[test]
    fn ssdeep_of_empty_and_of_data() {
        assert_eq!(digests_of(b"", None)["ssdeep"], "3::");
        let data: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let h = digests_of(&data, None)["ssdeep"]
            .as_str()
            .unwrap()
            .to_owned();
        let parts: Vec<&str> = h.split(':').collect();
        assert_eq!(parts.len(), 3, "{h}");
        assert!(parts[1].len() > 10, "{h}");
    }
}
