//! Identities of what a source saw: one version of one file, one log line.
//! The checkpoint and the transport's duplicate window key on them.

use std::time::SystemTime;

use crate::walk::WalkedFile;

/// The transport's and checkpoint's identity for one version of one file.
pub(crate) fn file_key(source: &str, file: &WalkedFile) -> String {
    let mtime = file
        .modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    digest(&[
        source.as_bytes(),
        std::os::unix::ffi::OsStrExt::as_bytes(file.path.as_os_str()),
        &file.size.to_le_bytes(),
        &mtime.to_le_bytes(),
    ])
}

/// Identity of one line of a sensor log.
pub(crate) fn line_key(source: &str, line: &[u8]) -> String {
    digest(&[source.as_bytes(), b"line", line])
}

fn digest(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..16])
}
