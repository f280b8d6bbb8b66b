//! Each digest the hash worker computes, one stream over the same bytes in
//! memory, beside the machine's best single stream for it: `openssl speed`
//! (OpenSSL's assembly, in memory), or the `ssdeep` tool on a file in the
//! page cache.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

/// Bytes each digest reads per run.
const SIZE: usize = 256 << 20;
/// Runs of each; the fastest counts, on both sides.
const RUNS: usize = 3;

/// What a digest is measured against.
enum Reference {
    /// `openssl speed -evp` of the digest's own name.
    Openssl,
    /// A tool given the bytes as a file.
    Tool(&'static str),
    None,
}

const DIGESTS: [(&str, Reference); 6] = [
    ("md5", Reference::Openssl),
    ("sha1", Reference::Openssl),
    ("sha256", Reference::Openssl),
    ("sha512", Reference::Openssl),
    ("ssdeep", Reference::Tool("ssdeep")),
    ("tlsh", Reference::None),
];

pub(super) fn digests(work_dir: &Path) -> Result<()> {
    let data = noise(SIZE);
    let file = work_dir.join("digests.bin");
    fs::write(&file, &data).with_context(|| format!("cannot write {}", file.display()))?;
    println!(
        "\ndigests: one stream over {} MiB, fastest of {RUNS} runs",
        SIZE >> 20
    );
    println!(
        "{:<8} {:>11} {:>16} {:>10}  reference",
        "digest", "trawl MB/s", "reference MB/s", "vs ref"
    );
    for (name, reference) in DIGESTS {
        let Some(ours) = fastest(|| trawl_scanners::digest(name, &data).is_some()) else {
            println!("{name:<8} not in this build");
            continue;
        };
        let (theirs, what) = match reference {
            Reference::Openssl => (openssl_speed(name), "openssl speed, in memory"),
            Reference::Tool(program) => (
                fastest(|| {
                    Command::new(program)
                        .arg(&file)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                }),
                program,
            ),
            Reference::None => (None, ""),
        };
        match theirs {
            Some(theirs) => println!(
                "{name:<8} {ours:>11.0} {theirs:>16.0} {:>9.2}x  {what}",
                ours / theirs
            ),
            None => println!("{name:<8} {ours:>11.0} {:>16} {:>10}", "-", "-"),
        }
    }
    let _ = fs::remove_file(&file);
    Ok(())
}

/// MB/s of the fastest of [`RUNS`] runs over [`SIZE`] bytes; `None` if a run failed.
fn fastest(mut run: impl FnMut() -> bool) -> Option<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..RUNS {
        let start = Instant::now();
        if !run() {
            return None;
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    Some(SIZE as f64 / best / 1e6)
}

/// OpenSSL's own figure for one stream of 1 MiB blocks, in MB/s, the
/// fastest of [`RUNS`] one-second runs. Timed by the clock, as trawl's
/// side is: by default `openssl speed` divides by its own CPU time, which
/// leaves out whatever time the machine gave to other work, and a busy or
/// shared machine then made trawl look up to half as fast.
fn openssl_speed(alg: &str) -> Option<f64> {
    (0..RUNS)
        .map(|_| openssl_speed_once(alg))
        .try_fold(0f64, |best, run| Some(best.max(run?)))
}

/// One run's figure, from its machine-readable line `+F:N:md5:BYTES_PER_SECOND`.
fn openssl_speed_once(alg: &str) -> Option<f64> {
    let out = Command::new("openssl")
        .args([
            "speed", "-elapsed", "-evp", alg, "-bytes", "1048576", "-seconds", "1", "-mr",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("+F:")?
                .rsplit(':')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map(|bytes_per_s| bytes_per_s / 1e6)
}

/// Bytes that no digest finds a shortcut through.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
