//! trawl's built-in scanners and the registry that builds them from config.

mod clamav;
mod executable;
mod exif;
mod extract;
mod factory;
mod filetype;
mod hash;
pub mod samples;
pub mod yara;

pub use executable::entropy;
pub use factory::{ScannerFactory, ScannerRegistry};
pub use filetype::{detect, FileType};
pub use hash::digest;

/// Every scanner this build carries, by `type`.
pub fn builtin_scanners() -> ScannerRegistry {
    let mut registry = ScannerRegistry::new("worker");
    registry.add("hash", Box::new(hash::HashFactory));
    registry.add("filetype", Box::new(filetype::FiletypeFactory));
    registry.add("yara", Box::new(yara::YaraFactory));
    registry.add("pe", Box::new(executable::PE_FACTORY));
    registry.add("elf", Box::new(executable::ELF_FACTORY));
    registry.add("clamav", Box::new(clamav::ClamavFactory));
    registry.add("exif", Box::new(exif::ExifFactory));
    registry.add("extract", Box::new(extract::ExtractFactory));
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_lists_known_ones() {
        let c = trawl_config::parse(
            std::path::Path::new("n.toml"),
            "version = 1\n[workers.x]\ntype = 'clamd'\n",
        )
        .unwrap();
        let e = builtin_scanners()
            .get(&c.workers["x"].component)
            .err()
            .expect("an unknown type")
            .to_string();
        assert!(e.contains("workers.x") && e.contains("clamd"), "{e}");
        assert!(
            e.contains("clamav, elf, exif, extract, filetype, hash, pe, yara"),
            "{e}"
        );
    }

    #[test]
    fn keyless_scanners_reject_stray_keys() {
        let c = trawl_config::parse(
            std::path::Path::new("n.toml"),
            "version = 1\n[workers.h]\ntype = 'hash'\nalgos = ['md5']\n",
        )
        .unwrap();
        let w = &c.workers["h"];
        let e = builtin_scanners()
            .get(&w.component)
            .unwrap()
            .check(w)
            .unwrap_err()
            .to_string();
        assert!(e.contains("algos"), "{e}");
    }
}
