//! trawl's built-in scanners and the registry that builds them from config.

mod clamav;
mod dispatch;
mod executable;
mod exif;
mod extract;
mod filetype;
mod hash;
mod registry;
pub mod samples;
pub mod yara;

pub use dispatch::Dispatch;
pub use executable::entropy;
pub use filetype::{detect, FileType};
pub use registry::{builtin_scanners, BuildError, ScannerFactory, ScannerRegistry};
