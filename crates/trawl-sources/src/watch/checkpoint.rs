//! What a watching source has published, kept on disk so that a restart
//! neither republishes nor skips.
//!
//! One line per handled occurrence, `E<TAB>key<TAB>hex(data path)`, plus
//! `M<TAB>name<TAB>value` marks where the source's log readers stand (the
//! last mark of a name wins). Paths are hex so any byte may appear in them.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

pub(crate) struct Checkpoint {
    path: PathBuf,
    keys: HashSet<String>,
    paths: HashSet<PathBuf>,
    marks: HashMap<String, String>,
    file: std::fs::File,
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
        let mut marks = HashMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, '\t');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("E"), Some(key), Some(hexpath)) => {
                    if let Ok(bytes) = hex::decode(hexpath) {
                        entries.insert(
                            key.to_owned(),
                            PathBuf::from(std::ffi::OsString::from_vec(bytes)),
                        );
                    }
                }
                (Some("M"), Some(name), Some(value)) => {
                    marks.insert(name.to_owned(), value.to_owned());
                }
                // A torn last line from a crash: that occurrence is handled again.
                _ => {}
            }
        }
        entries.retain(|_, p| p.symlink_metadata().is_ok());
        let tmp = path.with_extension("checkpoint.tmp");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            for (key, p) in &entries {
                f.write_all(entry_line(key, p).as_bytes())?;
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
            file,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
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
}
