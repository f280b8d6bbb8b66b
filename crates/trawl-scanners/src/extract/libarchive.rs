//! 7z, rar (v4 and v5) and cab through libarchive, read from memory. The
//! members' packed sizes are not known here, so `max_ratio` holds for the
//! archive as a whole. libarchive cannot decrypt these formats: an encrypted
//! member is counted and named in the result, not guessed at.

use std::io::Cursor;

use compress_tools::{ArchiveContents, ArchiveIteratorBuilder};
use trawl_core::{ScanError, ScanInput, TreeBudget};

use super::{Extractor, Unpacked};

/// `S_IFMT` and `S_IFREG`: directories, links and devices are skipped; an
/// entry whose mode names no kind at all (some archivers leave it out) is a file.
const KIND_MASK: u32 = 0o170000;
const REGULAR: u32 = 0o100000;

fn lossy(name: &[u8]) -> compress_tools::Result<String> {
    Ok(String::from_utf8_lossy(name).into_owned())
}

impl Extractor {
    pub(super) fn libarchive(
        &self,
        input: &ScanInput<'_>,
        format: &'static str,
        allowed: TreeBudget,
    ) -> Result<Unpacked, ScanError> {
        let data = input.data;
        let mut u = Unpacked::new(format, allowed);
        let entries = ArchiveIteratorBuilder::new(Cursor::new(data))
            .decoder(lossy)
            .build()
            .map_err(|e| ScanError::Failed(format!("unreadable {format}: {e}")))?;
        // The whole archive's share of the ratio cap.
        let ratio_cap = (data.len() as u64).saturating_mul(self.limits.max_ratio);
        let mut current: Option<(String, Vec<u8>)> = None;
        for item in entries {
            match item {
                ArchiveContents::StartOfEntry(name, stat) => {
                    if u.out_of_time(input) {
                        break;
                    }
                    u.entries += 1;
                    if !matches!(stat.st_mode & KIND_MASK, 0 | REGULAR) {
                        continue;
                    }
                    if u.full() {
                        u.stop(self.max_children(&u));
                        break;
                    }
                    current = Some((name, Vec::new()));
                }
                ArchiveContents::DataChunk(chunk) => {
                    let Some((name, bytes)) = current.as_mut() else {
                        continue;
                    };
                    bytes.extend_from_slice(&chunk);
                    let so_far = u.bytes + bytes.len() as u64;
                    if bytes.len() as u64 > u.bytes_left() {
                        let why = self.max_total_bytes(&u, name);
                        u.stop(why);
                        break;
                    }
                    if so_far > ratio_cap {
                        u.stop(format!(
                            "{name}: the archive unpacks to more than max_ratio ({}) × its size",
                            self.limits.max_ratio
                        ));
                        break;
                    }
                }
                ArchiveContents::EndOfEntry => {
                    if let Some((name, bytes)) = current.take() {
                        self.take(&mut u, name, bytes);
                    }
                }
                ArchiveContents::Err(e) => {
                    let name = current.take().map_or_else(|| "archive".into(), |(n, _)| n);
                    // libarchive's own words, without the errno it leaves behind.
                    let why = match e {
                        compress_tools::Error::Extraction { details, .. } => details,
                        e => e.to_string(),
                    };
                    if why.to_ascii_lowercase().contains("encrypt") {
                        u.encrypted += 1;
                        u.stop(format!(
                            "{name}: encrypted ({format} encryption cannot be opened)"
                        ));
                    } else {
                        u.stop(format!("{name}: {why}"));
                    }
                    break;
                }
            }
        }
        Ok(u)
    }
}
