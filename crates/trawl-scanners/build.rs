//! UnRAR (the `unrar` crate) is C++, and `unrar_sys` asks for `-lstdc++`
//! by name, which links the shared library. A folder holding only the
//! toolchain's `libstdc++.a`, searched before the system's, makes the linker
//! take the archive instead, so the binary needs no libstdc++ where it runs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CXX");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || env != "gnu" {
        return;
    }
    let Some(archive) = static_libstdcxx() else {
        println!("cargo:warning=no static libstdc++ found: the binary links the shared one");
        return;
    };
    let dir =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("static-cxx");
    let link = dir.join("libstdc++.a");
    let linked = std::fs::create_dir_all(&dir).and_then(|()| match std::fs::remove_file(&link) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => std::os::unix::fs::symlink(&archive, &link),
    });
    match linked {
        Ok(()) => println!("cargo:rustc-link-search=native={}", dir.display()),
        Err(e) => println!("cargo:warning=cannot link {}: {e}", link.display()),
    }
}

/// The C++ compiler's own `libstdc++.a`, as it reports it.
fn static_libstdcxx() -> Option<PathBuf> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(cxx)
        .arg("-print-file-name=libstdc++.a")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // A compiler that does not have the file prints its bare name back.
    (path.is_absolute() && Path::new(&path).is_file()).then_some(path)
}
