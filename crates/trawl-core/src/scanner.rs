use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{PayloadEvent, WorkerInfo};

/// One payload handed to a scanner: its event (metadata), its bytes, and
/// when the scan must give up.
pub struct ScanInput<'a> {
    pub event: &'a PayloadEvent,
    pub data: &'a [u8],
    /// The scan's time budget; see [`ScanInput::overdue`].
    pub timeout: Duration,
    deadline: Instant,
}

impl<'a> ScanInput<'a> {
    /// A scan that may take `timeout` from now.
    pub fn new(event: &'a PayloadEvent, data: &'a [u8], timeout: Duration) -> Self {
        ScanInput {
            event,
            data,
            timeout,
            deadline: Instant::now() + timeout,
        }
    }

    /// What a scanner's loops call between steps: a scan past its budget
    /// stops there, so an overrun never keeps a thread busy after its
    /// timeout result is recorded.
    pub fn overdue(&self) -> Result<(), ScanError> {
        if Instant::now() >= self.deadline {
            Err(ScanError::Timeout(self.timeout))
        } else {
            Ok(())
        }
    }

    /// The name to show for this payload: the sensor's filename, else the path's last part.
    pub fn display_name(&self) -> Option<&str> {
        self.event.meta.filename.as_deref().or_else(|| {
            self.event
                .source
                .path
                .as_deref()
                .map(|p| p.rsplit('/').next().unwrap_or(p))
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The scanner gave up after its time budget.
    #[error("scan timed out after {0:?}")]
    Timeout(Duration),
    /// The payload could not be scanned (malformed input, engine error…).
    #[error("{0}")]
    Failed(String),
    /// A service the scanner needs is down (e.g. clamd): the error is
    /// recorded and the payload scanned again later, replacing the record.
    #[error("{0}")]
    Unavailable(String),
}

/// A file found inside a payload (an archive member), scanned like a carved file.
#[derive(Debug, Clone)]
pub struct ChildPayload {
    /// The member's name in its archive: data, never a filesystem path.
    pub name: String,
    pub data: Vec<u8>,
    /// The share of the tree's extraction limits this member may use when
    /// it is itself unpacked.
    pub budget: Option<crate::TreeBudget>,
}

/// A rule or signature that fired, as every scanner that matches reports
/// it: what `filter.yara` and the stores' rule fields read, whichever
/// scanner found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMatch {
    pub rule: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl RuleMatch {
    pub fn new(rule: impl Into<String>, tags: impl IntoIterator<Item = impl Into<String>>) -> Self {
        RuleMatch {
            rule: rule.into(),
            tags: tags.into_iter().map(Into::into).collect(),
        }
    }
}

/// A scan's findings: the scanner's own report, the rules that fired (also
/// listed in the report, in the scanner's own detail), and the files it
/// unpacked, which re-enter the pipeline as payloads.
#[derive(Debug, Default)]
pub struct ScanOutput {
    pub data: serde_json::Value,
    pub matches: Vec<RuleMatch>,
    pub children: Vec<ChildPayload>,
    /// The ruleset this scan ran with, from scanners whose rules reload
    /// while trawl runs: the result names it, whatever was loaded since.
    pub ruleset: Option<String>,
}

impl ScanOutput {
    /// A report with no rule matches and nothing unpacked.
    pub fn findings(data: serde_json::Value) -> Self {
        ScanOutput {
            data,
            ..ScanOutput::default()
        }
    }
}

/// A scanner: blocking, CPU-bound work on one payload, run off the async threads.
///
/// Implementations are shared by every scan slot of a worker group, so they
/// hold compiled state (rules) and must be cheap to call concurrently.
pub trait Scanner: Send + Sync + 'static {
    /// Identity of the results this scanner produces (part of the result
    /// id), with the ruleset loaded now.
    fn info(&self) -> WorkerInfo;

    fn scan(&self, input: &ScanInput<'_>) -> Result<ScanOutput, ScanError>;

    /// Payloads up to this many bytes are scanned on the caller's thread, not
    /// handed to the slot's own: for a scan of a few microseconds the hand-off
    /// (waking one thread, then the other) costs more than the scan. Only for
    /// scanners whose time is bounded by the size and small at this size.
    fn inline_up_to(&self) -> usize {
        0
    }

    /// Load the scanner's rules again: always when `force` (SIGHUP), else
    /// when their files changed and have stayed unchanged since the last
    /// look. Scanners without rule files have nothing to do.
    fn reload(&self, force: bool) -> Reload {
        let _ = force;
        Reload::Unchanged
    }
}

/// What a [`Scanner::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    /// New rules are in use from the next scan on.
    Loaded {
        ruleset: String,
        rules: usize,
    },
    /// The rules did not compile: the previous ones stay in use. Each
    /// error reads `file:line: message`.
    Failed {
        errors: Vec<String>,
    },
}

/// Rule problems shown on one line (an error message, `trawl status`):
/// the first few, and how many more. A broken rule set can hold thousands,
/// which no one reads on one line; `trawl rules check` lists every one.
pub fn problems_in_brief(problems: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = problems[..problems.len().min(SHOWN)].join("; ");
    if problems.len() > SHOWN {
        text.push_str(&format!(
            "; and {} more (`trawl rules check` lists them all)",
            problems.len() - SHOWN
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::problems_in_brief;

    #[test]
    fn a_long_list_of_problems_is_cut_to_a_few_and_a_count() {
        let problems: Vec<String> = (1..=12).map(|i| format!("r.yar:{i}: bad")).collect();
        let brief = problems_in_brief(&problems);
        assert!(brief.starts_with("r.yar:1: bad; r.yar:2: bad;"), "{brief}");
        assert!(brief.contains("r.yar:5: bad; and 7 more"), "{brief}");
        assert!(!brief.contains("r.yar:6:"), "{brief}");
        assert_eq!(
            problems_in_brief(&problems[..2]),
            "r.yar:1: bad; r.yar:2: bad"
        );
    }
}
