//! Each digest the hash worker computes, one stream over the same bytes in
//! memory, beside the machine's reference tool for it reading them from the
//! page cache (`openssl dgst`, `ssdeep`).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

/// Bytes each digest reads.
const SIZE: usize = 256 << 20;

/// Every digest, and the command that computes it for reference (the file
/// is appended), where there is one.
const DIGESTS: [(&str, &[&str]); 6] = [
    ("md5", &["openssl", "dgst", "-md5"]),
    ("sha1", &["openssl", "dgst", "-sha1"]),
    ("sha256", &["openssl", "dgst", "-sha256"]),
    ("sha512", &["openssl", "dgst", "-sha512"]),
    ("ssdeep", &["ssdeep"]),
    ("tlsh", &[]),
];

pub(super) fn digests(work_dir: &Path) -> Result<()> {
    let data = noise(SIZE);
    let file = work_dir.join("digests.bin");
    fs::write(&file, &data).with_context(|| format!("cannot write {}", file.display()))?;
    let mb_per_s = |start: Instant| SIZE as f64 / start.elapsed().as_secs_f64() / 1e6;
    println!("\ndigests: one stream over {} MiB", SIZE >> 20);
    println!(
        "{:<8} {:>11} {:>16} {:>10}",
        "digest", "trawl MB/s", "reference MB/s", "vs ref"
    );
    for (name, reference) in DIGESTS {
        let start = Instant::now();
        if trawl_scanners::digest(name, &data).is_none() {
            println!("{name:<8} not in this build");
            continue;
        }
        let ours = mb_per_s(start);
        let theirs = reference.split_first().and_then(|(program, args)| {
            let start = Instant::now();
            let ran = Command::new(program)
                .args(args)
                .arg(&file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ran.then(|| mb_per_s(start))
        });
        match theirs {
            Some(theirs) => println!(
                "{name:<8} {ours:>11.0} {theirs:>16.0} {:>9.2}x",
                ours / theirs
            ),
            None => println!("{name:<8} {ours:>11.0} {:>16} {:>10}", "-", "-"),
        }
    }
    let _ = fs::remove_file(&file);
    Ok(())
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
