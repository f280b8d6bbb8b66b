//! trawl's built-in scanners and the registry that builds them from config.

mod filetype;
mod hash;
mod registry;
pub mod yara;

pub use filetype::{detect, FileType};
pub use registry::{builtin_scanners, BuildError, ScannerFactory, ScannerRegistry};
