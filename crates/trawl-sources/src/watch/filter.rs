//! `include` / `exclude`: globs on a file's path under the watched folder.

use std::path::Path;

use trawl_config::{Component, ConfigError};

use super::WatchParams;

/// Builds the include/exclude filter from config.
pub(super) struct Filter {
    include: Option<globset::GlobSet>,
    exclude: Option<globset::GlobSet>,
}

impl Filter {
    pub(super) fn new(config: &Component, p: &WatchParams) -> Result<Self, ConfigError> {
        let set = |key: &str, globs: &[String]| -> Result<Option<globset::GlobSet>, ConfigError> {
            if globs.is_empty() {
                return Ok(None);
            }
            let mut b = globset::GlobSetBuilder::new();
            for g in globs {
                b.add(
                    globset::Glob::new(g)
                        .map_err(|e| config.error(format_args!("{key}: {g:?}: {e}")))?,
                );
            }
            b.build()
                .map(Some)
                .map_err(|e| config.error(format_args!("{key}: {e}")))
        };
        Ok(Filter {
            include: set("include", &p.include)?,
            exclude: set("exclude", &p.exclude)?,
        })
    }

    pub(super) fn wants(&self, rel: &Path) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(rel))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(rel))
    }
}
