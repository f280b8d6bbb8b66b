//! `trawl bench`: filled in below.
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
