//! One scan: the scanner runs on a blocking thread under its deadline,
//! while the delivery is kept alive; a panic or an overrun becomes a result.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use trawl_core::{Outcome, OutcomeStatus, PayloadEvent, ScanError, ScanInput, ScanOutput};
use trawl_transport::Delivery;

use crate::pool::{Group, HARD_TIMEOUT_MARGIN};

/// How often a long scan tells the transport it is still working.
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What became of one scan.
pub(crate) struct Scanned {
    pub(crate) outcome: Outcome,
    /// What the scanner found; its unpacked files are published before its result.
    pub(crate) output: ScanOutput,
    /// The scanner panicked (the slot is restarted).
    pub(crate) panic: Option<String>,
    /// A service was down: record the error, then scan again.
    pub(crate) retry: bool,
}

impl Scanned {
    pub(crate) fn failed(status: OutcomeStatus, message: String) -> Self {
        Scanned {
            outcome: Outcome::failed(status, message),
            output: ScanOutput::findings(serde_json::Value::Null),
            panic: None,
            retry: false,
        }
    }
}

pub(crate) async fn scan(
    g: &Group,
    event: Arc<PayloadEvent>,
    bytes: Bytes,
    delivery: &Delivery,
) -> Scanned {
    let scanner = g.scanner.clone();
    let timeout = g.timeout;
    let mut job =
        tokio::task::spawn_blocking(move || scanner.scan(&ScanInput::new(&event, &bytes, timeout)));
    let hard_limit = tokio::time::sleep(g.timeout + HARD_TIMEOUT_MARGIN);
    tokio::pin!(hard_limit);
    // Not `interval`: its immediate first tick still waits for the timer wheel (up to 1 ms).
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            joined = &mut job => return match joined {
                Ok(Ok(output)) => Scanned {
                    outcome: Outcome::ok(),
                    output,
                    panic: None,
                    retry: false,
                },
                Ok(Err(ScanError::Timeout(t))) => {
                    Scanned::failed(OutcomeStatus::Timeout, format!("scan timed out after {t:?}"))
                }
                Ok(Err(ScanError::Unavailable(why))) => Scanned {
                    retry: true,
                    ..Scanned::failed(OutcomeStatus::Error, format!("{why}; will retry"))
                },
                Ok(Err(e)) => Scanned::failed(OutcomeStatus::Error, e.to_string()),
                Err(e) => {
                    let msg = panic_message(e);
                    Scanned {
                        panic: Some(msg.clone()),
                        ..Scanned::failed(OutcomeStatus::Error, format!("scanner panicked: {msg}"))
                    }
                }
            },
            _ = &mut hard_limit => {
                // The blocking thread cannot be cancelled; it finishes on its own and is ignored.
                return Scanned::failed(
                    OutcomeStatus::Timeout,
                    format!("scan did not return within {:?}", g.timeout),
                );
            }
            _ = progress.tick() => {
                let _ = delivery.in_progress().await;
            }
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into()),
        Err(e) => e.to_string(),
    }
}
