//! End-to-end tests: the real `trawl` binary, run as a user runs it, with
//! files generated at test time and results read back from SQLite/JSONL.

mod bad_input;
#[macro_use]
mod brokers;
mod clamd;
mod dedup;
mod deploy;
mod distributed;
mod harness;
mod hostile;
mod node;
mod readme;
mod replay;
mod scan;
mod scanners;
mod sensors;
mod soak;
mod stores;
mod telemetry;
mod ui;
