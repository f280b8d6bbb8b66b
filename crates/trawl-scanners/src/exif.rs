//! `exif`: metadata read by the real `exiftool`, kept running in
//! `-stay_open` mode (one process per concurrent scan, not one per file:
//! Perl's start-up costs ~100 ms). A process that dies or overruns the
//! worker's timeout is killed and replaced.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};
use trawl_config::{BuildError, ConfigError, WorkerConfig};
use trawl_core::{ScanError, ScanInput, ScanOutput, Scanner, WorkerInfo};

use crate::factory::ScannerFactory;

/// Tags about the temporary file trawl hands to exiftool, not about the payload.
const TEMP_FILE_TAGS: [&str; 10] = [
    "SourceFile",
    "FileName",
    "Directory",
    "FileSize",
    "FileModifyDate",
    "FileAccessDate",
    "FileInodeChangeDate",
    "FilePermissions",
    "ExifToolVersion",
    "Error",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExifParams {
    #[serde(default = "default_exiftool")]
    exiftool: String,
    /// Longer string values are cut (binary-heavy tags, embedded thumbnails).
    #[serde(default = "default_max_value")]
    max_value_bytes: usize,
}

fn default_exiftool() -> String {
    "exiftool".into()
}
fn default_max_value() -> usize {
    1024
}

pub(crate) struct ExifFactory;

impl ScannerFactory for ExifFactory {
    fn check(&self, config: &WorkerConfig) -> Result<(), ConfigError> {
        config.component.params::<ExifParams>().map(|_| ())
    }

    fn build(&self, config: &WorkerConfig) -> Result<Arc<dyn Scanner>, BuildError> {
        Ok(Arc::new(ExifScanner::new(config)?))
    }
}

impl ExifScanner {
    fn new(config: &WorkerConfig) -> Result<Self, BuildError> {
        let p: ExifParams = config.component.params()?;
        let scratch = tempfile::Builder::new()
            .prefix("trawl-exif-")
            .tempdir()
            .map_err(|e| config.component.error(format_args!("scratch folder: {e}")))?;
        let scanner = ExifScanner {
            info: WorkerInfo::new(config.component.name.clone(), "1"),
            exiftool: p.exiftool,
            max_value: p.max_value_bytes,
            timeout: config.timeout,
            idle: Mutex::new(Vec::new()),
            scratch,
        };
        // Fail at start, with the reason, when exiftool cannot run at all.
        let first = scanner
            .spawn()
            .map_err(|e| config.component.error(format_args!("exiftool: {e}")))?;
        scanner.idle.lock().expect("not poisoned").push(first);
        Ok(scanner)
    }
}

/// One `exiftool -stay_open` process and the lines of its output.
struct ExifTool {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Drop for ExifTool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct ExifScanner {
    info: WorkerInfo,
    exiftool: String,
    max_value: usize,
    timeout: Duration,
    idle: Mutex<Vec<ExifTool>>,
    scratch: tempfile::TempDir,
}

impl ExifScanner {
    fn spawn(&self) -> std::io::Result<ExifTool> {
        let mut child = Command::new(&self.exiftool)
            .args(["-stay_open", "True", "-@", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        // A reader thread lets a scan wait with a deadline.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ExifTool {
            child,
            stdin,
            lines,
        })
    }

    /// Run one file through `tool`; `Err` leaves the process unusable.
    fn run(&self, tool: &mut ExifTool, path: &std::path::Path) -> Result<String, ScanError> {
        let died = |e: std::io::Error| ScanError::Failed(format!("exiftool stopped: {e}"));
        writeln!(
            tool.stdin,
            "-json\n-charset\nfilename=utf8\n{}\n-execute",
            path.display()
        )
        .and_then(|_| tool.stdin.flush())
        .map_err(died)?;
        let deadline = Instant::now() + self.timeout;
        let mut out = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tool.lines.recv_timeout(left) {
                Ok(line) if line.trim_end() == "{ready}" => return Ok(out),
                Ok(line) => {
                    out.push_str(&line);
                    out.push('\n');
                }
                Err(RecvTimeoutError::Timeout) => return Err(ScanError::Timeout(self.timeout)),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ScanError::Failed(
                        "exiftool exited while reading the file".into(),
                    ))
                }
            }
        }
    }

    /// Tags of the payload: the temp file's own tags removed, long values cut.
    fn tags(&self, json: &str) -> Result<Value, ScanError> {
        let parsed: Vec<Map<String, Value>> = serde_json::from_str(json)
            .map_err(|e| ScanError::Failed(format!("exiftool output: {e}")))?;
        let mut tags = parsed.into_iter().next().unwrap_or_default();
        let error = tags.get("Error").and_then(Value::as_str).map(str::to_owned);
        tags.retain(|k, _| !TEMP_FILE_TAGS.contains(&k.as_str()));
        for v in tags.values_mut() {
            if let Value::String(s) = v {
                if s.len() > self.max_value {
                    s.truncate(s.floor_char_boundary(self.max_value));
                    s.push_str("…(trimmed)");
                }
            }
        }
        let mut out = Map::new();
        out.insert("tag_count".into(), Value::from(tags.len()));
        if let Some(e) = error {
            out.insert("exiftool_error".into(), Value::from(e));
        }
        out.insert("tags".into(), Value::Object(tags));
        Ok(Value::Object(out))
    }

    #[cfg(test)]
    fn idle_pids(&self) -> Vec<u32> {
        self.idle
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.child.id())
            .collect()
    }
}

impl Scanner for ExifScanner {
    fn info(&self) -> WorkerInfo {
        self.info.clone()
    }

    fn scan(&self, input: &ScanInput<'_>) -> Result<ScanOutput, ScanError> {
        let idle = self.idle.lock().expect("not poisoned").pop();
        let mut tool = match idle {
            Some(t) => t,
            None => self
                .spawn()
                .map_err(|e| ScanError::Unavailable(format!("cannot start exiftool: {e}")))?,
        };
        // A payload's bytes go through a private file: exiftool reads paths.
        // Its name is random, never taken from the event: a path is an
        // argument line of exiftool's.
        let scratch = tempfile::NamedTempFile::new_in(self.scratch.path())
            .and_then(|mut f| f.write_all(input.data).map(|_| f))
            .map_err(|e| ScanError::Failed(format!("scratch file: {e}")))?;
        let ran = self.run(&mut tool, scratch.path());
        drop(scratch);
        match ran {
            Ok(json) => {
                self.idle.lock().expect("not poisoned").push(tool);
                self.tags(&json).map(ScanOutput::findings)
            }
            // Killed on drop; the next scan starts a fresh process.
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trawl_core::{BlobRef, PayloadEvent, SourceInfo, SourceKind};

    /// A JPEG holding only an EXIF block with Make and Model (no image data);
    /// each string must be over 3 bytes, as shorter ones live inside the entry.
    pub(crate) fn exif_jpeg(make: &str, model: &str) -> Vec<u8> {
        let strings = [make, model].map(|s| {
            let mut b = s.as_bytes().to_vec();
            b.push(0);
            b
        });
        // TIFF: header (8) + IFD count (2) + 2 entries (24) + next IFD (4), then the strings.
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        tiff.extend_from_slice(&2u16.to_le_bytes());
        let mut offset = 8 + 2 + 24 + 4;
        for (tag, s) in [(0x010fu16, &strings[0]), (0x0110, &strings[1])] {
            tiff.extend_from_slice(&tag.to_le_bytes());
            tiff.extend_from_slice(&2u16.to_le_bytes()); // ASCII
            tiff.extend_from_slice(&(s.len() as u32).to_le_bytes());
            tiff.extend_from_slice(&(offset as u32).to_le_bytes());
            offset += s.len();
        }
        tiff.extend_from_slice(&0u32.to_le_bytes());
        for s in &strings {
            tiff.extend_from_slice(s);
        }
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe1];
        jpeg.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        jpeg.extend_from_slice(&app1);
        jpeg.extend_from_slice(&[0xff, 0xd9]);
        jpeg
    }

    fn scanner(timeout: &str) -> ExifScanner {
        let c = trawl_config::parse(
            std::path::Path::new("n.toml"),
            &format!("version = 1\n[workers.exif]\ntype = 'exif'\ntimeout = '{timeout}'\n"),
        )
        .unwrap();
        ExifScanner::new(&c.workers["exif"]).unwrap()
    }

    fn event() -> PayloadEvent {
        PayloadEvent::new_root(
            "00".into(),
            0,
            BlobRef::Inline(Vec::new()),
            SourceInfo {
                kind: SourceKind::Cli,
                sensor: "s".into(),
                path: None,
            },
        )
    }

    fn scan(s: &dyn Scanner, data: &[u8]) -> Result<Value, ScanError> {
        s.scan(&ScanInput::new(
            &event(),
            data,
            std::time::Duration::from_secs(60),
        ))
        .map(|out| out.data)
    }

    #[test]
    fn reads_exif_through_one_long_lived_process() {
        let s = scanner("30s");
        let v = scan(&s, &exif_jpeg("TrawlCam", "Model 7")).unwrap();
        assert_eq!(v["tags"]["Make"], "TrawlCam");
        assert_eq!(v["tags"]["Model"], "Model 7");
        assert_eq!(v["tags"]["MIMEType"], "image/jpeg");
        assert!(
            v["tags"].get("FileName").is_none(),
            "the scratch file's name is not the payload's"
        );
        let v = scan(&s, b"plain words, no metadata").unwrap();
        assert!(v["tags"]["MIMEType"].is_null() || v["tags"]["MIMEType"] == "text/plain");
    }

    #[test]
    fn a_dead_or_overrunning_exiftool_is_replaced() {
        let s = scanner("30s");
        for pid in s.idle_pids() {
            std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            scan(&s, &exif_jpeg("AcmeCo", "Model B")).is_err(),
            "the killed process fails its scan"
        );
        assert_eq!(
            scan(&s, &exif_jpeg("AcmeCo", "Model B")).unwrap()["tags"]["Make"],
            "AcmeCo"
        );

        let hasty = scanner("1ms");
        let e = scan(&hasty, &exif_jpeg("Cameron", "Model D")).unwrap_err();
        assert!(matches!(e, ScanError::Timeout(_)), "{e}");
    }
}
