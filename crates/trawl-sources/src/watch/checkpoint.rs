//! What a watching source has published, kept on disk so that a restart
//! neither republishes nor skips.
//!
//! One line per handled occurrence, `E<TAB>key<TAB>hex(data path)`, plus
//! `M<TAB>name<TAB>value` marks where the source's log readers stand (the
//! last mark of a name wins). Before an occurrence is published,
//! `P<TAB>key<TAB>payload id<TAB>hex(data path)` records the id it is
//! published under: if the process dies before the occurrence is handled,
//! the next run publishes it again under the same id, so its results keep
//! their ids and replace what was stored. Paths are hex so any byte may
//! appear in them.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

pub(crate) struct Checkpoint {
    path: PathBuf,
    keys: HashSet<String>,
    paths: HashSet<PathBuf>,
    marks: HashMap<String, String>,
    /// Payload ids of occurrences published and not yet handled, by key.
    pending: HashMap<String, (String, PathBuf)>,
    /// Keys of those published by this run (never offered again by it).
    in_flight: HashSet<String>,
    file: std::fs::File,
}

fn hex_path(hexpath: &str) -> Option<PathBuf> {
    hex::decode(hexpath)
        .ok()
        .map(|bytes| PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

impl Checkpoint {
    /// Load the checkpoint, dropping entries whose data file is gone, and
    /// rewrite it compacted (via rename, so a crash leaves it whole).
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut entries: HashMap<String, PathBuf> = HashMap::new();
        let mut pending: HashMap<String, (String, PathBuf)> = HashMap::new();
        let mut marks = HashMap::new();
        for line in text.lines() {
            let parts: Vec<&str> = line.split('\t').collect();
            match parts[..] {
                ["E", key, hexpath] => {
                    if let Some(p) = hex_path(hexpath) {
                        entries.insert(key.to_owned(), p);
                    }
                }
                ["P", key, id, hexpath] => {
                    if let Some(p) = hex_path(hexpath) {
                        pending.insert(key.to_owned(), (id.to_owned(), p));
                    }
                }
                ["M", name, value] => {
                    marks.insert(name.to_owned(), value.to_owned());
                }
                // A torn last line from a crash: that occurrence is handled again.
                _ => {}
            }
        }
        entries.retain(|_, p| p.symlink_metadata().is_ok());
        pending.retain(|key, (_, p)| !entries.contains_key(key) && p.symlink_metadata().is_ok());
        let tmp = path.with_extension("checkpoint.tmp");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            for (key, p) in &entries {
                f.write_all(entry_line(key, p).as_bytes())?;
            }
            for (key, (id, p)) in &pending {
                f.write_all(pending_line(key, id, p).as_bytes())?;
            }
            for (name, value) in &marks {
                f.write_all(format!("M\t{name}\t{value}\n").as_bytes())?;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            paths: entries.values().cloned().collect(),
            keys: entries.into_keys().collect(),
            marks,
            pending,
            in_flight: HashSet::new(),
            file,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the occurrence was handled, or is being handled by this run.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.keys.contains(key) || self.in_flight.contains(key)
    }

    /// The payload id to publish an occurrence under: the one a run that
    /// died before handling it used, else a new one, recorded first.
    /// [`Checkpoint::sync`] before publishing makes it durable.
    pub(crate) fn begin(&mut self, key: &str, path: &Path) -> std::io::Result<String> {
        self.in_flight.insert(key.to_owned());
        if let Some((id, _)) = self.pending.get(key) {
            return Ok(id.clone());
        }
        let id = ulid::Ulid::generate().to_string();
        self.file
            .write_all(pending_line(key, &id, path).as_bytes())?;
        self.pending
            .insert(key.to_owned(), (id.clone(), path.to_path_buf()));
        Ok(id)
    }

    /// An occurrence begun by this run is handled and its data file gone
    /// (deleted or moved by `after`): nothing to keep but the end of its
    /// pending line, which the next compaction drops with the file.
    pub(crate) fn forget(&mut self, key: &str) {
        self.in_flight.remove(key);
        self.pending.remove(key);
    }

    /// Whether any occurrence of this data file was handled.
    pub(crate) fn has_path(&self, path: &Path) -> bool {
        self.paths.contains(path)
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn marks(&self) -> &HashMap<String, String> {
        &self.marks
    }

    /// Append a handled occurrence; [`Checkpoint::sync`] makes it durable. A
    /// crash before that republishes it, which the transport drops as a
    /// duplicate by its ingest key.
    pub(crate) fn record(&mut self, key: &str, path: &Path) -> std::io::Result<()> {
        self.file.write_all(entry_line(key, path).as_bytes())?;
        self.keys.insert(key.to_owned());
        self.paths.insert(path.to_path_buf());
        self.forget(key);
        Ok(())
    }

    pub(crate) fn mark(&mut self, name: &str, value: &str) -> std::io::Result<()> {
        if self.marks.get(name).map(String::as_str) != Some(value) {
            self.file
                .write_all(format!("M\t{name}\t{value}\n").as_bytes())?;
            self.marks.insert(name.to_owned(), value.to_owned());
        }
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

fn entry_line(key: &str, path: &Path) -> String {
    format!("E\t{key}\t{}\n", hex::encode(path.as_os_str().as_bytes()))
}

fn pending_line(key: &str, id: &str, path: &Path) -> String {
    format!(
        "P\t{key}\t{id}\t{}\n",
        hex::encode(path.as_os_str().as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_forgets_files_that_are_gone() {
        let d = tempfile::tempdir().unwrap();
        let cp_path = d.path().join("s.checkpoint");
        let kept = d.path().join("kept\nwith newline");
        let gone = d.path().join("gone");
        std::fs::write(&kept, b"k").unwrap();
        std::fs::write(&gone, b"g").unwrap();
        let mut cp = Checkpoint::open(&cp_path).unwrap();
        cp.record("k1", &kept).unwrap();
        cp.record("g1", &gone).unwrap();
        cp.mark("eve", "1:2:300").unwrap();
        cp.sync().unwrap();
        drop(cp);
        std::fs::remove_file(&gone).unwrap();
        // A torn line at the end is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&cp_path)
            .unwrap()
            .write_all(b"E\tpartial")
            .unwrap();

        let cp = Checkpoint::open(&cp_path).unwrap();
        assert!(cp.contains("k1"));
        assert!(cp.has_path(&kept));
        assert!(!cp.contains("g1"));
        assert_eq!(cp.len(), 1);
        assert_eq!(cp.marks().get("eve").map(String::as_str), Some("1:2:300"));
    }

    #[test]
    fn an_occurrence_begun_but_not_handled_keeps_its_id_across_a_crash() {
        let d = tempfile::tempdir().unwrap();
        let cp_path = d.path().join("s.checkpoint");
        let data = d.path().join("f");
        let done = d.path().join("g");
        std::fs::write(&data, b"x").unwrap();
        std::fs::write(&done, b"y").unwrap();
        let mut cp = Checkpoint::open(&cp_path).unwrap();
        let id = cp.begin("k", &data).unwrap();
        let other = cp.begin("d", &done).unwrap();
        assert!(cp.contains("k"), "not offered again by this run");
        cp.record("d", &done).unwrap();
        cp.sync().unwrap();
        drop(cp); // a crash: "k" was never handled

        let mut cp = Checkpoint::open(&cp_path).unwrap();
        assert!(!cp.contains("k"), "offered again after the crash");
        assert!(cp.contains("d"));
        assert_eq!(
            cp.begin("k", &data).unwrap(),
            id,
            "published under its old id"
        );
        assert_ne!(id, other);
        cp.record("k", &data).unwrap();
        cp.sync().unwrap();
        drop(cp);
        let text = std::fs::read_to_string(&cp_path).unwrap();
        let cp = Checkpoint::open(&cp_path).unwrap();
        assert!(cp.contains("k"));
        let compacted = std::fs::read_to_string(&cp_path).unwrap();
        assert!(text.contains("P\tk"));
        assert!(
            !compacted.contains("P\t"),
            "handled pending lines are compacted away"
        );
    }
}
