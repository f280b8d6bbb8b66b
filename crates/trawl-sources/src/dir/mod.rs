//! A folder watched for new complete files (`type = "dir"`).
//!
//! A file is complete once its size and modification time have not changed
//! for `settle`, or at once when it was renamed into place long enough ago.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use trawl_config::{Component, ConfigError, NonZeroDuration};
use trawl_core::{PayloadMeta, SourceKind};

use crate::factory::SourceFactory;
use crate::walk::WalkedFile;
use crate::watch::{file_key, Checkpoint, Layout, Occurrence, Settling, Watch, WatchParams};
use crate::Source;

pub(crate) struct DirFactory;

/// `type = "dir"`'s own keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirParams {
    /// Quiet period after which an unchanged file counts as complete.
    #[serde(default = "default_settle")]
    settle: NonZeroDuration,
}

fn default_settle() -> NonZeroDuration {
    NonZeroDuration::from_secs(2)
}

fn checked(config: &Component) -> Result<(Watch, Duration), ConfigError> {
    let (shared, own): (_, DirParams) = WatchParams::split(config)?;
    Ok((Watch::check(config, &shared)?, own.settle.get()))
}

impl SourceFactory for DirFactory {
    fn check(&self, config: &Component) -> Result<(), ConfigError> {
        checked(config).map(|_| ())
    }

    fn build(&self, config: &Component, data_dir: &Path) -> Result<Arc<dyn Source>, ConfigError> {
        let (watch, settle) = checked(config)?;
        let name = watch.name().to_owned();
        watch.build(config, data_dir, move || {
            Box::new(DirLayout {
                name: name.clone(),
                settle,
                settling: Settling::default(),
            })
        })
    }
}

struct DirLayout {
    name: String,
    settle: Duration,
    settling: Settling,
}

impl Layout for DirLayout {
    fn kind(&self) -> SourceKind {
        SourceKind::Dir
    }

    fn ready(
        &mut self,
        listing: &[WalkedFile],
        done: &Checkpoint,
        now: Instant,
    ) -> Vec<Occurrence> {
        self.settling.retain(listing);
        listing
            .iter()
            .filter_map(|file| {
                let key = file_key(&self.name, file);
                (!done.contains(&key) && self.settling.settled(file, now, self.settle)).then(|| {
                    Occurrence {
                        path: file.path.clone(),
                        key,
                        meta: PayloadMeta::default(),
                        companions: Vec::new(),
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
