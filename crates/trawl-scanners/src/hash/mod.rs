//! Digests of the bytes, computed in one pass: md5, sha1 and sha256 by
//! default (what stoQ's hash worker gives), sha512, ssdeep and tlsh on
//! request. sha256 comes from ingest when the event carries it.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use trawl_config::{BuildError, ConfigError, WorkerConfig};
use trawl_core::{ScanError, ScanInput, ScanOutput, Scanner, WorkerInfo};

mod blocks;
mod md5;
mod sha512;

use crate::factory::ScannerFactory;
pub(crate) use md5::md5;
use md5::Md5;
use sha512::Sha512;

/// A digest the worker computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Algorithm {
    Md5,
    Sha1,
    Sha256,
    Sha512,
    Ssdeep,
    Tlsh,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Ssdeep => "ssdeep",
            Algorithm::Tlsh => "tlsh",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HashParams {
    /// Which digests, in the order they are listed in results.
    #[serde(default = "default_algorithms")]
    algorithms: Vec<Algorithm>,
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::Md5, Algorithm::Sha1, Algorithm::Sha256]
}

pub(crate) struct HashFactory;

impl HashFactory {
    fn params(config: &WorkerConfig) -> Result<HashParams, ConfigError> {
        let p: HashParams = config.component.params()?;
        let bad = |why: String| config.component.error(format_args!("algorithms: {why}"));
        if p.algorithms.is_empty() {
            return Err(bad(
                "name at least one of md5, sha1, sha256, sha512, ssdeep, tlsh".into(),
            ));
        }
        for (i, a) in p.algorithms.iter().enumerate() {
            if p.algorithms[..i].contains(a) {
                return Err(bad(format!("{} is listed twice", a.name())));
            }
        }
        if cfg!(not(feature = "ssdeep")) && p.algorithms.contains(&Algorithm::Ssdeep) {
            return Err(bad(
                "ssdeep is not in this build (built without the `ssdeep` feature)".into(),
            ));
        }
        Ok(p)
    }
}

impl ScannerFactory for HashFactory {
    fn check(&self, config: &WorkerConfig) -> Result<(), ConfigError> {
        Self::params(config).map(drop)
    }

    fn build(&self, config: &WorkerConfig) -> Result<Arc<dyn Scanner>, BuildError> {
        let algorithms = Self::params(config)?.algorithms;
        // Results of another list of digests are other results.
        let names: Vec<&str> = algorithms.iter().map(|a| a.name()).collect();
        let version = format!("hash-2:{}", names.join(","));
        // The fuzzy digests run at a fifth of md5's speed or less.
        let fast = algorithms
            .iter()
            .all(|a| !matches!(a, Algorithm::Ssdeep | Algorithm::Tlsh));
        Ok(Arc::new(HashScanner {
            info: WorkerInfo::new(config.component.name.clone(), &version),
            algorithms,
            inline_up_to: if fast { INLINE_UP_TO } else { 0 },
        }))
    }
}

struct HashScanner {
    info: WorkerInfo,
    algorithms: Vec<Algorithm>,
    inline_up_to: usize,
}

/// md5, sha1, sha256 and sha512 of this many bytes take under 0.1 ms.
const INLINE_UP_TO: usize = 16 * 1024;

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
        digests(input.data, &self.algorithms, sha256, || input.overdue()).map(ScanOutput::findings)
    }

    fn inline_up_to(&self) -> usize {
        self.inline_up_to
    }
}

/// One running digest.
enum Running {
    Md5(Md5),
    Sha1(Sha1),
    Sha256(Sha256),
    Sha512(Sha512),
    #[cfg(feature = "ssdeep")]
    Ssdeep(Box<ssdeep::Generator>),
    Tlsh(Box<tlsh2::TlshDefaultBuilder>),
    /// Known before the bytes were read.
    Known(String),
}

impl Running {
    /// A digest of `len` bytes.
    #[cfg_attr(not(feature = "ssdeep"), allow(unused_variables))]
    fn new(algorithm: Algorithm, len: usize, known_sha256: &Option<String>) -> Self {
        match (algorithm, known_sha256) {
            (Algorithm::Sha256, Some(known)) => Running::Known(known.clone()),
            (Algorithm::Md5, _) => Running::Md5(Md5::new()),
            (Algorithm::Sha1, _) => Running::Sha1(Sha1::new()),
            (Algorithm::Sha256, None) => Running::Sha256(Sha256::new()),
            (Algorithm::Sha512, _) => Running::Sha512(Sha512::new()),
            #[cfg(feature = "ssdeep")]
            (Algorithm::Ssdeep, _) => {
                let mut generator = Box::<ssdeep::Generator>::default();
                // Known in advance, the size spares the block hashes no
                // digest of that size uses (a sixth of ssdeep's time).
                let _ = generator.set_fixed_input_size_in_usize(len);
                Running::Ssdeep(generator)
            }
            #[cfg(not(feature = "ssdeep"))]
            (Algorithm::Ssdeep, _) => unreachable!("refused by the config check"),
            (Algorithm::Tlsh, _) => Running::Tlsh(Box::default()),
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        match self {
            Running::Md5(h) => h.update(chunk),
            Running::Sha1(h) => h.update(chunk),
            Running::Sha256(h) => h.update(chunk),
            Running::Sha512(h) => h.update(chunk),
            #[cfg(feature = "ssdeep")]
            Running::Ssdeep(h) => {
                h.update(chunk);
            }
            Running::Tlsh(h) => h.update(chunk),
            Running::Known(_) => {}
        }
    }

    /// The digest; `None` where the bytes give none (too few for a fuzzy hash).
    fn finish(self) -> Option<String> {
        match self {
            Running::Md5(h) => Some(hex::encode(h.finalize())),
            Running::Sha1(h) => Some(hex::encode(h.finalize())),
            Running::Sha256(h) => Some(hex::encode(h.finalize())),
            Running::Sha512(h) => Some(hex::encode(h.finalize())),
            #[cfg(feature = "ssdeep")]
            Running::Ssdeep(h) => h.finalize().ok().map(|h| h.to_string()),
            Running::Tlsh(h) => h
                .build()
                .map(|t| String::from_utf8_lossy(t.hash().as_ref()).into_owned()),
            Running::Known(known) => Some(known),
        }
    }
}

/// One digest of `data` by name (`md5` … `tlsh`), as the hash worker
/// computes it; `None` for a name this build does not compute, or where the
/// bytes give none (too few for a fuzzy hash).
pub fn digest(algorithm: &str, data: &[u8]) -> Option<String> {
    let algorithm: Algorithm = serde_json::from_value(json!(algorithm)).ok()?;
    if cfg!(not(feature = "ssdeep")) && algorithm == Algorithm::Ssdeep {
        return None;
    }
    let found = digests(data, &[algorithm], None, || Ok(())).ok()?;
    Some(found.get(algorithm.name())?.as_str()?.to_owned())
}

fn digests(
    data: &[u8],
    algorithms: &[Algorithm],
    known_sha256: Option<String>,
    overdue: impl Fn() -> Result<(), ScanError>,
) -> Result<Value, ScanError> {
    let mut running: Vec<Running> = algorithms
        .iter()
        .map(|a| Running::new(*a, data.len(), &known_sha256))
        .collect();
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        if i % CHUNKS_PER_CHECK == CHUNKS_PER_CHECK - 1 {
            overdue()?;
        }
        for r in &mut running {
            r.update(chunk);
        }
    }
    let mut out = Map::new();
    for (a, r) in algorithms.iter().zip(running) {
        if let Some(digest) = r.finish() {
            out.insert(a.name().to_owned(), json!(digest));
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Algorithm; 6] = [
        Algorithm::Md5,
        Algorithm::Sha1,
        Algorithm::Sha256,
        Algorithm::Sha512,
        Algorithm::Ssdeep,
        Algorithm::Tlsh,
    ];

    fn digests_of(data: &[u8], known_sha256: Option<String>) -> serde_json::Value {
        let all = if cfg!(feature = "ssdeep") {
            &ALL[..]
        } else {
            &[ALL[0], ALL[1], ALL[2], ALL[3], ALL[5]][..]
        };
        digests(data, all, known_sha256, || Ok(())).unwrap()
    }

    fn hash_config(extra: &str) -> WorkerConfig {
        let text = format!("version = 1\n[workers.h]\ntype = \"hash\"\n{extra}\n");
        let mut config = trawl_config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        config.workers.remove("h").unwrap()
    }

    #[test]
    fn a_large_payload_stops_at_its_deadline() {
        let data = vec![7u8; CHUNK * CHUNKS_PER_CHECK * 2];
        let late = || Err(ScanError::Timeout(std::time::Duration::ZERO));
        assert!(matches!(
            digests(&data, &ALL[..4], None, late),
            Err(ScanError::Timeout(_))
        ));
    }

    #[test]
    fn md5_sha1_and_sha256_unless_asked_for_more() {
        let scanner = HashFactory.build(&hash_config("")).unwrap();
        assert_eq!(scanner.info().version, "hash-2:md5,sha1,sha256");
        let d = digests(b"abc", &default_algorithms(), None, || Ok(())).unwrap();
        let keys: Vec<&String> = d.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["md5", "sha1", "sha256"]);
        let asked = hash_config("algorithms = [\"sha256\", \"tlsh\"]");
        let scanner = HashFactory.build(&asked).unwrap();
        assert_eq!(scanner.info().version, "hash-2:sha256,tlsh");
    }

    /// Small payloads skip the hand-off to a scan thread only while every
    /// digest is a fast one: tlsh of 16 KiB would hold the runtime's thread.
    #[test]
    fn only_the_fast_digests_scan_small_payloads_inline() {
        let default = HashFactory.build(&hash_config("")).unwrap();
        assert_eq!(default.inline_up_to(), INLINE_UP_TO);
        let fuzzy = HashFactory
            .build(&hash_config("algorithms = [\"md5\", \"tlsh\"]"))
            .unwrap();
        assert_eq!(fuzzy.inline_up_to(), 0);
    }

    #[test]
    fn a_wrong_list_of_algorithms_is_a_config_error() {
        for (list, says) in [
            ("[]", "name at least one"),
            ("[\"md5\", \"md5\"]", "md5 is listed twice"),
            ("[\"crc32\"]", "crc32"),
        ] {
            let e = HashFactory
                .check(&hash_config(&format!("algorithms = {list}")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{list}: {e}");
        }
    }

    #[test]
    fn tlsh_of_the_reference_implementation() {
        // The vector the tlsh2 crate and Trend Micro's TLSH agree on.
        let d = digests_of(
            b"Sed ut perspiciatis unde omnis iste natuserror sit voluptatem accusantium",
            None,
        );
        assert_eq!(
            d["tlsh"],
            "T184A022B383C2A2A20ACB0830880CF0202CCAC080033A023800338A30B0880AA8E0BE38"
        );
        // Too few bytes for a locality-sensitive hash: none is given.
        assert!(digests_of(b"abc", None).get("tlsh").is_none());
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
        assert_eq!(
            d["sha512"],
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn the_million_a_vectors_read_in_many_chunks() {
        // FIPS 180 and RFC 1321's long vectors: each digest's block code
        // (trawl's own md5, the crates' CPU-specific code for the rest)
        // runs across chunk boundaries.
        let d = digests_of(&vec![b'a'; 1_000_000], None);
        assert_eq!(d["md5"], "7707d6ae4e027c70eea2a935c2296f21");
        assert_eq!(d["sha1"], "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
        assert_eq!(
            d["sha256"],
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
        assert_eq!(
            d["sha512"],
            "e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973eb\
             de0ff244877ea60a4cb0432ce577c31beb009c5c2c49aa2e4eadb217ad8cc09b"
        );
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
        // Told the size in advance, the generator gives what it gives
        // without, at every block size.
        for len in [100, 20_000, 300_000, 5_000_000] {
            let data: Vec<u8> = (0..len as u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            let mut unsized_ = ssdeep::Generator::new();
            unsized_.update(&data);
            assert_eq!(
                digests_of(&data, None)["ssdeep"],
                unsized_.finalize().unwrap().to_string(),
                "{len} bytes"
            );
        }
    }
}
