//! The CLI's log: a node logs as a service does; a command's warnings are
//! for the person who ran it, without timestamps or module paths, and drawn
//! above the progress bar when one is shown.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;

use indicatif::ProgressBar;
use tracing_subscriber::EnvFilter;

/// The progress bar log lines are drawn above, while there is one.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

pub fn init(filter: Option<&str>, default_level: &str, json: bool, service: bool) {
    let filter = filter
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default_level));
    // Colours for a person at a terminal; journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(|| AboveBar);
    if json {
        builder.json().init();
    } else if service {
        builder.init();
    } else {
        builder.without_time().with_target(false).init();
    }
}

/// Draw log lines above `bar` from now on (`None`: straight to stderr).
pub fn above(bar: Option<ProgressBar>) {
    *BAR.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// Standard error, with the progress bar (if any) cleared around each line.
struct AboveBar;

impl Write for AboveBar {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bar = BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| io::stderr().write(buf)),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
