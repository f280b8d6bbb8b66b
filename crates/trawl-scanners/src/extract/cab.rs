//! Microsoft cabinet files (MSZIP, LZX, stored), read from memory by the
//! cab crate (pure Rust). A folder compresses its files together, so
//! `max_ratio` holds for the archive as a whole.

use std::io::Cursor;

use trawl_core::{ScanError, ScanInput, TreeBudget};

use super::{Extractor, Took, Unpacked};

impl Extractor {
    pub(super) fn cab(
        &self,
        input: &ScanInput<'_>,
        allowed: TreeBudget,
    ) -> Result<Unpacked, ScanError> {
        let mut u = Unpacked::new("cab", allowed);
        let mut cabinet = cab::Cabinet::new(Cursor::new(input.data))
            .map_err(|e| ScanError::Failed(format!("unreadable cab: {e}")))?;
        let names: Vec<String> = cabinet
            .folder_entries()
            .flat_map(|folder| folder.file_entries())
            .map(|file| file.name().to_owned())
            .collect();
        u.entries = names.len();
        let cap = self.archive_cap(input.data);
        for name in names {
            if !self.admit(&mut u, input) {
                break;
            }
            match cabinet.read_file(&name) {
                Ok(mut member) => {
                    if let Took::Limit = self.take_read(&mut u, name, &mut member, cap) {
                        break;
                    }
                }
                // An unsupported compression (Quantum) or a broken block:
                // the other members still count.
                Err(e) => u.stop(format!("{name}: {e}")),
            }
        }
        Ok(u)
    }
}
