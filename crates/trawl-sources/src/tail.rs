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
/// Longest line kept: a longer one (no sensor writes such, a damaged or
/// hostile log may) is skipped with a warning, not buffered without end.
const MAX_LINE: usize = 16 * 1024 * 1024;

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
    /// Inside a line over [`MAX_LINE`]: bytes are dropped up to its newline.
    skipping: bool,
    /// Where to start when the file is first opened.
    resume: Option<(FileId, u64)>,
    /// [`READ_STEP`] and [`MAX_LINE`] (smaller in tests).
    step: u64,
    max_line: usize,
}

impl LogTail {
    pub(crate) fn new(path: &Path) -> Self {
        Self::with_limits(path, READ_STEP, MAX_LINE)
    }

    fn with_limits(path: &Path, step: u64, max_line: usize) -> Self {
        LogTail {
            step,
            max_line,
            path: path.to_path_buf(),
            open: None,
            pos: 0,
            partial: Vec::new(),
            skipping: false,
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
                // Rotated: finish the old file, a step per call, then switch.
                if self.read_available(&mut lines)? == self.step {
                    return Ok(lines);
                }
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
        self.skipping = false;
        Ok(())
    }

    /// Lines in the next step of the open file; returns the bytes read.
    fn read_available(&mut self, lines: &mut Vec<Line>) -> std::io::Result<u64> {
        let Some((f, id)) = &mut self.open else {
            return Ok(0);
        };
        let mut buf = Vec::new();
        f.take(self.step).read_to_end(&mut buf)?;
        // `pos` is where the line being assembled starts.
        let mut start = self.pos;
        let mut rest: &[u8] = &buf;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let mut bytes = std::mem::take(&mut self.partial);
            bytes.extend_from_slice(&rest[..nl]);
            let len = bytes.len() as u64 + 1;
            if std::mem::take(&mut self.skipping) {
                // The end of an over-long line: its start was passed already.
                start += nl as u64 + 1;
            } else {
                if !bytes.is_empty() {
                    lines.push(Line {
                        file: *id,
                        start,
                        bytes,
                    });
                }
                start += len;
            }
            rest = &rest[nl + 1..];
        }
        if self.skipping {
            start += rest.len() as u64;
        } else {
            self.partial.extend_from_slice(rest);
            if self.partial.len() > self.max_line {
                tracing::warn!(log = %self.path.display(), offset = start, max = self.max_line, "over-long line skipped");
                start += self.partial.len() as u64;
                self.partial.clear();
                self.skipping = true;
            }
        }
        self.pos = start;
        Ok(buf.len() as u64)
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

    /// Every line, over as many calls (read steps) as the log takes.
    fn drain(t: &mut LogTail) -> Vec<String> {
        (0..1000)
            .flat_map(|_| texts(&t.read_lines().unwrap()))
            .collect()
    }

    /// Read steps of 64 bytes and lines of at most 256.
    fn small(log: &Path) -> LogTail {
        LogTail::with_limits(log, 64, 256)
    }

    #[test]
    fn a_rotated_file_is_read_to_its_end_however_long() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("eve.json");
        let mut t = small(&log);
        append(&log, "first\n");
        assert_eq!(drain(&mut t), ["first"]);
        // Many read steps' worth written just before the sensor rotates.
        let old: Vec<String> = (0..40).map(|i| format!("old-line-{i:04}")).collect();
        append(&log, &(old.join("\n") + "\n"));
        std::fs::rename(&log, d.path().join("eve.json.1")).unwrap();
        append(&log, "new\n");
        let mut expected = old.clone();
        expected.push("new".into());
        assert_eq!(drain(&mut t), expected);
    }

    #[test]
    fn an_endless_line_is_skipped_and_the_next_one_read() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("files.log");
        let mut t = small(&log);
        append(&log, "before\n");
        for _ in 0..20 {
            append(&log, &"x".repeat(50));
            t.read_lines().unwrap();
            assert!(t.partial.len() <= 256 + 64);
        }
        append(&log, "\nafter\n");
        let mut t2 = small(&log);
        assert_eq!(drain(&mut t2), ["before", "after"], "read in one go");
        assert_eq!(drain(&mut t), ["after"], "read while it grew");
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
