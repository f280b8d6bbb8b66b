//! The process's allocator, mimalloc, and the options it runs with.

/// mimalloc: the 1 KiB corpus's scans allocate many small blocks (YARA-X
/// rebuilds its modules' structures for every scan), which glibc's malloc
/// serves a fifth slower.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// Set before the first allocation, so every arena is made with them
/// (freed memory goes back to the system after 10 ms, arenas commit as
/// used): with mimalloc's defaults the default `trawl scan` peaks at 300 MB
/// on the carved corpus instead of 140-150, as freed payload buffers stay
/// committed for a second. Returning them at once instead costs the
/// kernel a fresh page for most of the next payload's bytes: 10 ms lets
/// the next buffer reuse them, which took that run from 4.72 s to 4.49 s
/// and a JetStream scanner node from 11.0 to 10.5 CPU-s, at the same peak.
#[used]
#[link_section = ".init_array"]
static ALLOCATOR_OPTIONS: extern "C" fn() = allocator_options;

// mimalloc 3's `mi_option_e` (the sys crate's constants are version 2's).
const ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
const PURGE_DELAY: std::ffi::c_int = 15;

const PURGE_AFTER_MS: std::ffi::c_long = 10;

extern "C" fn allocator_options() {
    // SAFETY: mimalloc's own constructor (priority 101) has run; setting an
    // option is a store into its option table.
    unsafe {
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        mi_option_set(PURGE_DELAY, PURGE_AFTER_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_options_are_set_before_main() {
        // SAFETY: reading mimalloc's option table.
        let (eager, purge) = unsafe {
            (
                mi_option_get(ARENA_EAGER_COMMIT),
                mi_option_get(PURGE_DELAY),
            )
        };
        // mimalloc 3 defaults to 2 and 1000 (ms).
        assert_eq!((eager, purge), (0, PURGE_AFTER_MS));
    }
}
