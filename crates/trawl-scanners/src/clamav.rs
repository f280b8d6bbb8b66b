//! `clamav`: the payload streamed to a running `clamd` (INSTREAM), over its
//! unix socket or TCP. A detection is reported like a rule match, so it is
//! searched the same way (`rule.name` in the datastores). When clamd is down
//! the result records it and the payload is scanned again later.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use trawl_config::{BuildError, ConfigError, WorkerConfig};
use trawl_core::{RuleMatch, ScanError, ScanInput, ScanOutput, Scanner, WorkerInfo};

use crate::factory::ScannerFactory;

/// Bytes per INSTREAM chunk.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClamParams {
    /// clamd's unix socket (`LocalSocket` in clamd.conf).
    socket: Option<String>,
    /// Or its TCP address (`TCPAddr:TCPSocket`), e.g. "127.0.0.1:3310".
    address: Option<String>,
}

#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => f.write_str(a),
        }
    }
}

fn endpoint(config: &WorkerConfig) -> Result<Endpoint, ConfigError> {
    let c = &config.component;
    let p: ClamParams = c.params()?;
    match (p.socket, p.address) {
        (Some(_), Some(_)) => Err(c.error("give either socket or address, not both")),
        (Some(s), None) => Ok(Endpoint::Unix(c.resolve_path(&s))),
        (None, Some(a)) if a.contains(':') => Ok(Endpoint::Tcp(a)),
        (None, Some(a)) => Err(c.error(format_args!("address: expected HOST:PORT, found {a:?}"))),
        (None, None) => Ok(Endpoint::Unix("/run/clamav/clamd.ctl".into())),
    }
}

pub(crate) struct ClamavFactory;

impl ScannerFactory for ClamavFactory {
    fn reports_matches(&self) -> bool {
        true
    }

    fn check(&self, config: &WorkerConfig) -> Result<(), ConfigError> {
        endpoint(config).map(|_| ())
    }

    fn build(&self, config: &WorkerConfig) -> Result<Arc<dyn Scanner>, BuildError> {
        let endpoint = endpoint(config)?;
        let scanner = ClamavScanner {
            info: WorkerInfo::new(config.component.name.clone(), "1"),
            endpoint,
            timeout: config.timeout,
        };
        // Say at start whether clamd answers; scans retry while it does not.
        match scanner.command(b"zVERSION\0") {
            Ok(v) => tracing::info!(worker = %scanner.info.name, clamd = %v, "clamd ready"),
            Err(e) => {
                tracing::warn!(worker = %scanner.info.name, error = %e, "clamd not answering at start; scans will retry")
            }
        }
        Ok(Arc::new(scanner))
    }
}

struct ClamavScanner {
    info: WorkerInfo,
    endpoint: Endpoint,
    timeout: Duration,
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl ClamavScanner {
    fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        let t = Some(self.timeout);
        Ok(match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)?;
                Box::new(s)
            }
            Endpoint::Tcp(a) => {
                // A host that drops packets must not hold the scan past its timeout.
                let mut last = std::io::Error::other("address resolves to nothing");
                let mut connected = None;
                for addr in std::net::ToSocketAddrs::to_socket_addrs(a.as_str())? {
                    match TcpStream::connect_timeout(&addr, self.timeout) {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = connected.ok_or(last)?;
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)?;
                Box::new(s)
            }
        })
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> ScanError {
        ScanError::Unavailable(format!("clamd at {}: {e}", self.endpoint))
    }

    /// One command, one NUL-terminated reply.
    fn command(&self, cmd: &[u8]) -> Result<String, ScanError> {
        let mut s = self.connect().map_err(|e| self.unavailable(e))?;
        s.write_all(cmd).map_err(|e| self.unavailable(e))?;
        self.reply(&mut *s)
    }

    fn reply(&self, s: &mut dyn Stream) -> Result<String, ScanError> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = s.read(&mut buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    ScanError::Timeout(self.timeout)
                }
                _ => self.unavailable(e),
            })?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.ends_with(b"\0") {
                out.pop();
                break;
            }
        }
        if out.is_empty() {
            return Err(self.unavailable("closed the connection without an answer"));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn instream(&self, data: &[u8]) -> Result<String, ScanError> {
        let mut s = self.connect().map_err(|e| self.unavailable(e))?;
        let sent = (|| {
            s.write_all(b"zINSTREAM\0")?;
            for chunk in data.chunks(CHUNK) {
                s.write_all(&(chunk.len() as u32).to_be_bytes())?;
                s.write_all(chunk)?;
            }
            s.write_all(&0u32.to_be_bytes())
        })();
        match sent {
            Ok(()) => self.reply(&mut *s),
            // clamd stops reading a stream past its StreamMaxLength, answers
            // and closes: its answer, when there is one, says why.
            Err(e) => self.reply(&mut *s).map_err(|_| self.unavailable(e)),
        }
    }
}

/// clamd's answer to INSTREAM as findings: `stream: OK`,
/// `stream: NAME FOUND`, or `… ERROR`.
fn verdict(reply: &str) -> Result<ScanOutput, ScanError> {
    let body = reply.strip_prefix("stream: ").unwrap_or(reply).trim();
    if body == "OK" {
        return Ok(ScanOutput::findings(
            json!({"infected": false, "match_count": 0, "matches": []}),
        ));
    }
    if let Some(name) = body.strip_suffix(" FOUND") {
        return Ok(ScanOutput {
            data: json!({
                "infected": true,
                "signature": name,
                "match_count": 1,
                "matches": [{"rule": name, "engine": "clamav"}],
            }),
            matches: vec![RuleMatch::new(name, [] as [&str; 0])],
            ..ScanOutput::default()
        });
    }
    if body.contains("size limit exceeded") {
        // Final for this file: scanning it again meets the same limit.
        return Err(ScanError::Failed(format!(
            "clamd refused the file: it is over clamd's StreamMaxLength ({body})"
        )));
    }
    Err(ScanError::Failed(format!("clamd: {body}")))
}

impl Scanner for ClamavScanner {
    fn info(&self) -> WorkerInfo {
        self.info.clone()
    }

    fn scan(&self, input: &ScanInput<'_>) -> Result<ScanOutput, ScanError> {
        verdict(&self.instream(input.data)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_findings_or_errors() {
        let clean = verdict("stream: OK").unwrap();
        assert_eq!(clean.data["infected"], false);
        assert!(clean.matches.is_empty());
        let found = verdict("stream: Eicar-Test-Signature FOUND").unwrap();
        assert_eq!(found.data["signature"], "Eicar-Test-Signature");
        assert_eq!(found.data["matches"][0]["rule"], "Eicar-Test-Signature");
        assert_eq!(
            found.matches,
            [RuleMatch::new("Eicar-Test-Signature", [] as [&str; 0])]
        );
        let e = verdict("INSTREAM size limit exceeded. ERROR").unwrap_err();
        assert!(e.to_string().contains("size limit"), "{e}");
    }
}
