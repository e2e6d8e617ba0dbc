//! Giving freed heap memory back to the system. glibc keeps what a burst freed (an MCP
//! session's tasks and channels, ~65 KB each, freed when it is parked) inside its arenas,
//! fragmented, so the process's resident size stays at the burst's high-water mark; trimming
//! returns every whole free page. The one call here is glibc's `malloc_trim`, which takes no
//! pointer and is safe to call at any time from any thread.

#![allow(unsafe_code)]

/// Returns the free pages of every malloc arena to the system (glibc's `malloc_trim(0)`).
/// It walks the arenas under their locks: call it after freeing much at once, not per
/// request. Whether any memory was released.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim reads and changes only the allocator's own state, under its
        // own locks, and is documented as callable at any time.
        unsafe { nix::libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
