//! One scan: the scanner runs on its slot's thread under its deadline,
//! while the delivery is kept alive; a panic or an overrun becomes a result.

use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc};
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

/// What a scan thread runs.
type Job = Box<dyn FnOnce() + Send>;

/// The thread a slot scans on, the same one scan after scan: what a scanner
/// keeps per thread (a YARA-X scanner, and the module data of its last
/// scan) then exists once per slot, not once per thread the runtime's
/// blocking pool ever started. Made at the slot's first scan, and again
/// after a scan overran its deadline (that thread is left to finish alone).
pub(crate) struct ScanThread {
    /// The worker's name, which the thread is named for.
    name: String,
    jobs: Option<mpsc::Sender<Job>>,
}

/// A scan the thread ended by panicking, with the panic's message.
type Ran<T> = Result<T, String>;

impl ScanThread {
    pub(crate) fn new(name: String) -> Self {
        ScanThread { name, jobs: None }
    }

    fn run<T: Send + 'static>(
        &mut self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<Ran<T>> {
        let (done, ran) = tokio::sync::oneshot::channel();
        let mut job: Job = Box::new(move || {
            let _ = done.send(guarded(work));
        });
        if let Some(jobs) = &self.jobs {
            match jobs.send(job) {
                Ok(()) => return ran,
                // The thread is gone (it cannot be, short of an abort): a new one.
                Err(mpsc::SendError(back)) => job = back,
            }
        }
        let (jobs, next) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name(format!("scan-{}", self.name))
            .spawn(move || {
                while let Ok(job) = next.recv() {
                    job();
                }
            });
        match spawned {
            Ok(_) => {
                let _ = jobs.send(job);
                self.jobs = Some(jobs);
            }
            // No thread to be had: the job is dropped, and its receiver hears so.
            Err(e) => {
                tracing::error!(worker = %self.name, error = %e, "cannot start a scan thread")
            }
        }
        ran
    }

    /// The running scan overran: the next one gets a thread of its own.
    fn abandon(&mut self) {
        self.jobs = None;
    }
}

pub(crate) async fn scan(
    g: &Group,
    thread: &mut ScanThread,
    event: Arc<PayloadEvent>,
    bytes: Bytes,
    delivery: &Delivery,
) -> Scanned {
    let scanner = g.scanner.clone();
    let timeout = g.timeout;
    if bytes.len() <= scanner.inline_up_to() {
        return scanned(guarded(|| {
            scanner.scan(&ScanInput::new(&event, &bytes, timeout))
        }));
    }
    let mut job = thread.run(move || scanner.scan(&ScanInput::new(&event, &bytes, timeout)));
    let hard_limit = tokio::time::sleep(g.timeout + HARD_TIMEOUT_MARGIN);
    tokio::pin!(hard_limit);
    // Not `interval`: its immediate first tick still waits for the timer wheel (up to 1 ms).
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            joined = &mut job => return scanned(joined.unwrap_or_else(|_| {
                Ok(Err(ScanError::Failed("no thread to scan on (see the log)".into())))
            })),
            _ = &mut hard_limit => {
                // A thread cannot be cancelled; it finishes on its own and is ignored.
                thread.abandon();
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

/// The result of a scan that returned or panicked.
fn scanned(ran: Ran<Result<ScanOutput, ScanError>>) -> Scanned {
    match ran {
        Ok(Ok(output)) => Scanned {
            outcome: Outcome::ok(),
            output,
            panic: None,
            retry: false,
        },
        Ok(Err(ScanError::Timeout(t))) => Scanned::failed(
            OutcomeStatus::Timeout,
            format!("scan timed out after {t:?}"),
        ),
        Ok(Err(ScanError::Unavailable(why))) => Scanned {
            retry: true,
            ..Scanned::failed(OutcomeStatus::Error, format!("{why}; will retry"))
        },
        Ok(Err(e)) => Scanned::failed(OutcomeStatus::Error, e.to_string()),
        Err(msg) => Scanned {
            panic: Some(msg.clone()),
            ..Scanned::failed(OutcomeStatus::Error, format!("scanner panicked: {msg}"))
        },
    }
}

/// `work`'s value, or the message it panicked with.
fn guarded<T>(work: impl FnOnce() -> T) -> Ran<T> {
    std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(panic_message)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
