//! Following a sensor's log (eve.json, files.log) line by line, across
//! rotation (rename + new file, or truncation in place), from a position
//! that survives restarts.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Most bytes read per call, so a huge log is taken in steps.
const READ_STEP: u64 = 32 * 1024 * 1024;

/// Which file a position belongs to: (device, inode).
pub(crate) type FileId = (u64, u64);

/// One complete line (without its newline).
pub(crate) struct Line {
    pub file: FileId,
    /// Offset of the line's first byte in its file.
    pub start: u64,
    pub bytes: Vec<u8>,
}

pub(crate) struct LogTail {
    path: PathBuf,
    open: Option<(File, FileId)>,
    /// Offset just past the last complete line returned.
    pos: u64,
    partial: Vec<u8>,
    /// Where to start when the file is first opened.
    resume: Option<(FileId, u64)>,
}

impl LogTail {
    pub(crate) fn new(path: &Path) -> Self {
        LogTail {
            path: path.to_path_buf(),
            open: None,
            pos: 0,
            partial: Vec::new(),
            resume: None,
        }
    }

    /// Start from a position saved by [`LogTail::mark`], if it still names this file.
    pub(crate) fn resume(&mut self, mark: &str) {
        let mut parts = mark.split(':').map(str::parse::<u64>);
        if let (Some(Ok(dev)), Some(Ok(ino)), Some(Ok(pos))) =
            (parts.next(), parts.next(), parts.next())
        {
            self.resume = Some(((dev, ino), pos));
        }
    }

    /// A position to save: `start` of the earliest line not yet handled, in
    /// `file`, or everything read so far.
    pub(crate) fn mark(&self, earliest_pending: Option<(FileId, u64)>) -> Option<String> {
        let (id, _) = self.open.as_ref().map(|(f, id)| (*id, f))?;
        let pos = match earliest_pending {
            Some((file, start)) if file == id => start,
            // Unhandled lines of a rotated file cannot be resumed: read this one whole.
            Some(_) => 0,
            None => self.pos,
        };
        Some(format!("{}:{}:{pos}", id.0, id.1))
    }

    fn identity(m: &std::fs::Metadata) -> FileId {
        (m.dev(), m.ino())
    }

    /// The first bytes of the file being read (for headers such as Zeek's `#fields`).
    pub(crate) fn head(&self, limit: u64) -> Vec<u8> {
        let mut out = Vec::new();
        if let Ok(f) = File::open(&self.path) {
            let _ = f.take(limit).read_to_end(&mut out);
        }
        out
    }

    /// Every complete line appended since the last call. A missing log is
    /// not an error: the sensor may not have written it yet.
    pub(crate) fn read_lines(&mut self) -> std::io::Result<Vec<Line>> {
        let mut lines = Vec::new();
        let current = match std::fs::metadata(&self.path) {
            Ok(m) => Some((Self::identity(&m), m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        match (&self.open, current) {
            (Some((_, id)), Some((cur, len))) if *id == cur && len < self.pos => {
                // Truncated in place (copytruncate): start over.
                self.seek(0)?;
            }
            (Some((_, id)), Some((cur, _))) if *id != cur => {
                // Rotated: finish the old file, then switch.
                self.read_available(&mut lines)?;
                self.open = None;
            }
            _ => {}
        }
        if self.open.is_none() {
            let Some((cur, len)) = current else {
                return Ok(lines);
            };
            let f = File::open(&self.path)?;
            self.open = Some((f, cur));
            let start = match self.resume.take() {
                Some((id, pos)) if id == cur && pos <= len => pos,
                _ => 0,
            };
            self.seek(start)?;
        }
        self.read_available(&mut lines)?;
        Ok(lines)
    }

    fn seek(&mut self, pos: u64) -> std::io::Result<()> {
        if let Some((f, _)) = &mut self.open {
            f.seek(SeekFrom::Start(pos))?;
        }
        self.pos = pos;
        self.partial.clear();
        Ok(())
    }

    fn read_available(&mut self, lines: &mut Vec<Line>) -> std::io::Result<()> {
        let Some((f, id)) = &mut self.open else {
            return Ok(());
        };
        let mut buf = Vec::new();
        f.take(READ_STEP).read_to_end(&mut buf)?;
        let mut start = self.pos;
        let mut rest: &[u8] = &buf;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let mut bytes = std::mem::take(&mut self.partial);
            bytes.extend_from_slice(&rest[..nl]);
            let len = bytes.len() as u64 + 1;
            if !bytes.is_empty() {
                lines.push(Line {
                    file: *id,
                    start,
                    bytes,
                });
            }
            start += len;
            rest = &rest[nl + 1..];
        }
        self.partial.extend_from_slice(rest);
        self.pos = start;
        Ok(())
    }
}

/// A sensor log that a layout turns into occurrences: the tail, plus the
/// lines handed out and not yet handled, so the position saved in the
/// checkpoint (under `mark`) never passes one of them.
pub(crate) struct FollowedLog {
    tail: LogTail,
    mark: &'static str,
    in_flight: HashMap<String, (FileId, u64)>,
}

impl FollowedLog {
    pub(crate) fn new(path: &Path, mark: &'static str) -> Self {
        FollowedLog {
            tail: LogTail::new(path),
            mark,
            in_flight: HashMap::new(),
        }
    }

    /// Resume from the checkpoint's marks; `true` if there was a position.
    pub(crate) fn resume(&mut self, marks: &HashMap<String, String>) -> bool {
        match marks.get(self.mark) {
            Some(m) => {
                self.tail.resume(m);
                true
            }
            None => false,
        }
    }

    pub(crate) fn head(&self, limit: u64) -> Vec<u8> {
        self.tail.head(limit)
    }

    /// New complete lines; a log that cannot be read is a warning, not a stop.
    pub(crate) fn read_lines(&mut self, source: &str) -> Vec<Line> {
        self.tail.read_lines().unwrap_or_else(|e| {
            tracing::warn!(source, log = %self.tail.path.display(), error = %e, "cannot read the sensor's log");
            Vec::new()
        })
    }

    /// The occurrence `key` from `line` is on its way.
    pub(crate) fn hand_out(&mut self, key: String, line: &Line) {
        self.in_flight.insert(key, (line.file, line.start));
    }

    pub(crate) fn handled(&mut self, key: &str) {
        self.in_flight.remove(key);
    }

    pub(crate) fn marks(&self) -> Vec<(String, String)> {
        let earliest = self
            .in_flight
            .values()
            .min_by_key(|(_, start)| *start)
            .copied();
        self.tail
            .mark(earliest)
            .map(|m| vec![(self.mark.to_owned(), m)])
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::append;

    fn texts(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            .collect()
    }

    #[test]
    fn follows_partial_lines_rotation_and_truncation() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("eve.json");
        let mut t = LogTail::new(&log);
        assert!(t.read_lines().unwrap().is_empty(), "no log yet is fine");
        append(&log, "one\ntw");
        assert_eq!(texts(&t.read_lines().unwrap()), ["one"]);
        append(&log, "o\nthree\n");
        assert_eq!(texts(&t.read_lines().unwrap()), ["two", "three"]);

        // Rotation: the rest of the old file is read before the new one.
        append(&log, "four\n");
        std::fs::rename(&log, d.path().join("eve.json.1")).unwrap();
        append(&log, "five\n");
        assert_eq!(texts(&t.read_lines().unwrap()), ["four", "five"]);

        // Truncation in place starts over.
        std::fs::write(&log, "").unwrap();
        t.read_lines().unwrap();
        append(&log, "six\n");
        assert_eq!(texts(&t.read_lines().unwrap()), ["six"]);
    }

    #[test]
    fn resumes_from_a_mark_only_in_the_same_file() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("files.log");
        append(&log, "a\nb\nc\n");
        let mut t = LogTail::new(&log);
        let lines = t.read_lines().unwrap();
        // "b" not handled yet: the mark points at it.
        let mark = t.mark(Some((lines[1].file, lines[1].start))).unwrap();
        let mut again = LogTail::new(&log);
        again.resume(&mark);
        assert_eq!(texts(&again.read_lines().unwrap()), ["b", "c"]);

        // A new file under the same name is read from its start.
        std::fs::remove_file(&log).unwrap();
        append(&log, "x\n");
        let mut fresh = LogTail::new(&log);
        fresh.resume(&mark);
        assert_eq!(texts(&fresh.read_lines().unwrap()), ["x"]);
    }
}
