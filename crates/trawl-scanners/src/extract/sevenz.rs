//! 7z, read from memory by sevenz-rust2 (pure Rust), with AES-encrypted
//! members and headers opened by the configured passwords. Members of a
//! solid block have no packed size of their own, so `max_ratio` holds for
//! the archive as a whole.

use std::io::Cursor;

use sevenz_rust2::{ArchiveReader, EntryDecision, Error, Password};
use trawl_core::{ScanError, ScanInput, TreeBudget};

use super::{Extractor, Pass, Took, Unpacked};

/// What a decoder may allocate for one block (dictionaries, PPMd models):
/// a hostile header may ask for gigabytes.
const DECODER_MEMORY_KB: usize = 256 * 1024;

impl Extractor {
    pub(super) fn seven_zip(
        &self,
        input: &ScanInput<'_>,
        allowed: TreeBudget,
    ) -> Result<Unpacked, ScanError> {
        self.with_passwords(|password| self.seven_zip_pass(input, allowed, password))
    }

    fn seven_zip_pass(
        &self,
        input: &ScanInput<'_>,
        allowed: TreeBudget,
        password: Option<&str>,
    ) -> Result<Pass, ScanError> {
        let mut u = Unpacked::new("7z", allowed);
        let mut reader = match ArchiveReader::new_with_memory_limit(
            Cursor::new(input.data),
            password.map_or_else(Password::empty, Password::new),
            DECODER_MEMORY_KB,
        ) {
            Ok(r) => r,
            Err(Error::PasswordRequired | Error::MaybeBadPassword(_)) => {
                return Ok(Pass::Locked(u))
            }
            Err(e) => return Err(ScanError::Failed(format!("unreadable 7z: {e}"))),
        };
        // One thread per archive: the node already runs a scan per core.
        reader.set_thread_count(1);
        let archive = reader.archive();
        u.entries = archive.files.len();
        u.encrypted = (0..archive.files.len())
            .filter(|&i| archive.is_file_encrypted(i))
            .count();
        let cap = self.archive_cap(input.data);
        let mut unreadable = false;
        let walked = reader.for_each_entries_with_decision(|entry, data| {
            if entry.is_directory || entry.is_anti_item {
                return Ok(EntryDecision::Continue);
            }
            if !self.admit(&mut u, input) {
                return Ok(EntryDecision::Stop);
            }
            Ok(
                match self.take_read(&mut u, entry.name.clone(), data, cap) {
                    Took::Member => EntryDecision::Continue,
                    Took::Limit => EntryDecision::Stop,
                    Took::Unreadable => {
                        unreadable = true;
                        EntryDecision::Stop
                    }
                },
            )
        });
        // A wrong key yields garbage that fails in the decoder or its
        // checksum, not always as a password error.
        let locked = matches!(
            walked,
            Err(Error::PasswordRequired | Error::MaybeBadPassword(_))
        ) || (u.encrypted > 0 && (walked.is_err() || unreadable));
        if locked {
            u.truncated = None;
            return Ok(Pass::Locked(u));
        }
        if let Err(e) = walked {
            u.stop(format!("unreadable 7z: {e}"));
        }
        Ok(Pass::Done(u))
    }
}
