//! Hostile samples built at run time (never committed as files), for the
//! tests and `trawl bench --hostile`.

/// An ELF32 whose `n` section headers each claim the whole file, but for
/// one that holds the section names.
pub fn overlapping_sections_elf(n: u16) -> Vec<u8> {
    const NAMES: &[u8] = b"\0.x\0";
    let names_at = 52 + u32::from(n) * 40;
    let len = names_at + NAMES.len() as u32;
    let mut elf = b"\x7fELF\x01\x01\x01".to_vec();
    elf.resize(16, 0);
    for (v, width) in [
        (2u32, 2), // ET_EXEC
        (3, 2),    // EM_386
        (1, 4),    // EV_CURRENT
        (0x1000, 4),
        (0, 4),  // no program headers
        (52, 4), // section headers right after this header
        (0, 4),
        (52, 2),
        (32, 2),
        (0, 2),
        (40, 2),
        (u32::from(n), 2),
        (1, 2), // section names in section 1
    ] {
        elf.extend_from_slice(&v.to_le_bytes()[..width]);
    }
    for i in 0..n {
        let header = if i == 1 {
            [0u32, 3, 0, 0, names_at, NAMES.len() as u32, 0, 0, 1, 0]
        } else {
            [1u32, 1, 0, 0, 0, len, 0, 0, 1, 0]
        };
        for v in header {
            elf.extend_from_slice(&v.to_le_bytes());
        }
    }
    elf.extend_from_slice(NAMES);
    elf
}

/// A Windows launcher that pip ships (a real PE32+ executable).
#[cfg(test)]
pub(crate) fn windows_launcher() -> Vec<u8> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import os, pip._vendor.distlib as d; print(os.path.join(os.path.dirname(d.__file__), 't64.exe'))"])
        .output()
        .expect("python3 with pip");
    let path = String::from_utf8(out.stdout).unwrap();
    std::fs::read(path.trim()).expect("pip's t64.exe launcher")
}
