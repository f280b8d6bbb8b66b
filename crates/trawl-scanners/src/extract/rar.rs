//! RAR (v4 and v5) through the UnRAR library the unrar crate builds from
//! source, with encrypted members and headers opened by the configured
//! passwords. UnRAR reads archives by path only, so the archive is handed
//! over as an anonymous in-memory file (`memfd`), never written to disk.
//! Packed sizes are not reported, so `max_ratio` holds for the archive as
//! a whole; a member's unpacked size is its header's, which UnRAR never
//! writes past, so a member too big for the room left is refused unread.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;

use trawl_core::{ScanError, ScanInput, TreeBudget};
use unrar::error::{Code, UnrarError};

use super::{Extractor, Pass, Unpacked};

/// The archive's bytes as a file only this process can reach.
struct MemFile {
    file: File,
}

impl MemFile {
    fn new(data: &[u8]) -> std::io::Result<Self> {
        // SAFETY: the name is a NUL-terminated literal; the returned fd is
        // checked and then owned by the File alone.
        let fd = unsafe { libc::memfd_create(c"trawl-rar".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(data)?;
        Ok(MemFile { file })
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// Whether UnRAR stopped for want of the right password (RAR 4 has no
/// password check: a wrong key shows as bad data in an encrypted member).
fn locked(e: &UnrarError, encrypted: bool) -> bool {
    matches!(e.code, Code::MissingPassword | Code::BadPassword)
        || (encrypted && e.code == Code::BadData)
}

impl Extractor {
    pub(super) fn rar(
        &self,
        input: &ScanInput<'_>,
        allowed: TreeBudget,
    ) -> Result<Unpacked, ScanError> {
        let file = MemFile::new(input.data).map_err(|e| {
            ScanError::Failed(format!("rar: cannot hold the archive in memory: {e}"))
        })?;
        let path = file.path();
        self.with_passwords(|password| self.rar_pass(input, allowed, &path, password))
    }

    fn rar_pass(
        &self,
        input: &ScanInput<'_>,
        allowed: TreeBudget,
        path: &std::path::Path,
        password: Option<&str>,
    ) -> Result<Pass, ScanError> {
        let mut u = Unpacked::new("rar", allowed);
        let archive = match password {
            Some(pw) => unrar::Archive::with_password(path, pw),
            None => unrar::Archive::new(path),
        };
        let mut open = match archive.open_for_processing() {
            Ok(open) => open,
            Err(e) if locked(&e, false) => return Ok(Pass::Locked(u)),
            Err(e) => return Err(ScanError::Failed(format!("unreadable rar: {e}"))),
        };
        let cap = self.archive_cap(input.data);
        loop {
            let header = match open.read_header() {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(e) if locked(&e, u.encrypted > 0) => return Ok(Pass::Locked(u)),
                Err(e) => {
                    u.stop(format!("unreadable rar: {e}"));
                    break;
                }
            };
            u.entries += 1;
            let entry = header.entry();
            let encrypted = entry.is_encrypted();
            u.encrypted += usize::from(encrypted);
            // Directories, and the tail of a member begun in another volume.
            if !entry.is_file() || entry.is_split_before() {
                match header.skip() {
                    Ok(next) => open = next,
                    Err(e) => {
                        u.stop(format!("unreadable rar: {e}"));
                        break;
                    }
                }
                continue;
            }
            if !self.admit(&mut u, input) {
                break;
            }
            let name = entry.filename.to_string_lossy().into_owned();
            let (room, why) = self.archive_room(&u, cap, &name);
            if entry.unpacked_size > room {
                u.stop(why);
                break;
            }
            match header.read() {
                Ok((bytes, next)) => {
                    self.take(&mut u, name, bytes);
                    open = next;
                }
                Err(e) if locked(&e, encrypted) => return Ok(Pass::Locked(u)),
                // UnRAR gives the archive up with a failed member.
                Err(e) => {
                    u.stop(format!("{name}: {e}"));
                    break;
                }
            }
        }
        Ok(Pass::Done(u))
    }
}
