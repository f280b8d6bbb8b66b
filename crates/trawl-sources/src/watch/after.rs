//! `after`: what becomes of a file once it is handled (kept, deleted or
//! moved), with the sidecars that belong to it.

use std::path::{Path, PathBuf};

use super::{Occurrence, Watch};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum After {
    Keep,
    Delete,
    Move(PathBuf),
}

impl Watch {
    /// Apply `after` to an occurrence's files; `true` if they stay in place.
    pub(super) fn apply_after(&self, occ: &Occurrence, data_still_needed: bool) -> bool {
        if self.after == After::Keep {
            return true;
        }
        let mut files: Vec<&Path> = occ.companions.iter().map(PathBuf::as_path).collect();
        if !data_still_needed {
            files.push(&occ.path);
        }
        let mut kept = false;
        for path in files {
            let done = match &self.after {
                After::Keep => Ok(()),
                After::Delete => std::fs::remove_file(path),
                After::Move(dir) => {
                    let rel = path.strip_prefix(&self.root).unwrap_or(path);
                    let dest = dir.join(rel);
                    dest.parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|_| std::fs::rename(path, &dest))
                }
            };
            match done {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(source = %self.name, path = %path.display(), error = %e, "cannot apply `after`; keeping the file");
                    kept = true;
                }
            }
        }
        kept || data_still_needed
    }
}
