//! Listing the regular files under a set of paths, without following
//! symlinks unless asked, and with every problem reported rather than fatal.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Debug, Clone)]
pub struct WalkedFile {
    pub path: PathBuf,
    pub size: u64,
    pub modified: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkIssue {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Walked {
    pub files: Vec<WalkedFile>,
    pub issues: Vec<WalkIssue>,
    /// Symlinks passed over (they are followed only with `follow_symlinks`).
    pub skipped_symlinks: usize,
}

impl Walked {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Walk `paths` (files or folders, recursively). A path named explicitly is
/// used even if it is a symlink; links found inside folders are skipped
/// unless `follow_symlinks`, and then loops are reported, not followed.
pub fn walk(paths: &[PathBuf], follow_symlinks: bool) -> Walked {
    let mut out = Walked::default();
    for root in paths {
        walk_one(root, follow_symlinks, &mut out);
    }
    out
}

fn walk_one(root: &Path, follow: bool, out: &mut Walked) {
    let walker = walkdir::WalkDir::new(root)
        .follow_links(follow)
        .follow_root_links(true)
        .sort_by_file_name();
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                let reason = if e.loop_ancestor().is_some() {
                    "symlink loop, not followed".to_owned()
                } else {
                    match e.io_error() {
                        Some(io) if io.kind() == std::io::ErrorKind::NotFound => {
                            "no such file or directory".to_owned()
                        }
                        Some(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                            "permission denied".to_owned()
                        }
                        _ => e.to_string(),
                    }
                };
                out.issues.push(WalkIssue { path, reason });
                continue;
            }
        };
        let ft = entry.file_type();
        if ft.is_dir() {
            continue;
        }
        if ft.is_symlink() {
            out.skipped_symlinks += 1;
            continue;
        }
        if !ft.is_file() {
            // FIFOs, sockets and devices would block or never end.
            out.issues.push(WalkIssue {
                path: entry.into_path(),
                reason: "not a regular file, skipped".into(),
            });
            continue;
        }
        match entry.metadata() {
            Ok(m) => out.files.push(WalkedFile {
                size: m.len(),
                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                path: entry.into_path(),
            }),
            Err(e) => out.issues.push(WalkIssue {
                path: entry.into_path(),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn names(w: &Walked, root: &Path) -> Vec<String> {
        w.files
            .iter()
            .map(|f| f.path.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn lists_files_recursively_and_skips_symlinks_by_default() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("a"), b"aa").unwrap();
        fs::write(d.path().join("sub/b"), b"bbb").unwrap();
        symlink(outside.path().join("secret"), d.path().join("out-file")).unwrap();
        symlink(outside.path(), d.path().join("out-dir")).unwrap();
        symlink(d.path(), d.path().join("sub/loop")).unwrap();

        let w = walk(&[d.path().to_path_buf()], false);
        assert_eq!(names(&w, d.path()), ["a", "sub/b"]);
        assert_eq!(w.bytes(), 5);
        assert_eq!(w.skipped_symlinks, 3);
        assert!(w.issues.is_empty(), "{:?}", w.issues);

        let w = walk(&[d.path().to_path_buf()], true);
        assert!(names(&w, d.path()).contains(&"out-file".to_owned()));
        assert!(
            w.issues.iter().any(|i| i.reason.contains("symlink loop")),
            "{:?}",
            w.issues
        );
    }

    #[test]
    fn missing_paths_and_special_files_are_issues() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let w = walk(&[d.path().join("nope"), d.path().to_path_buf()], false);
        assert!(w.files.is_empty());
        assert_eq!(w.issues.len(), 2, "{:?}", w.issues);
        assert_eq!(w.issues[0].reason, "no such file or directory");
        assert_eq!(w.issues[1].reason, "not a regular file, skipped");
    }
}
