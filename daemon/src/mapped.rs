//! A library file mapped read-only, for the ELF readers: symbols are
//! looked up where the page cache holds them, never copied.
//!
//! Reading libpython (30 MB with its symbols) into a buffer, twice at a
//! daemon's start, was four tenths of that start's CPU (page faults on
//! the fresh buffer, the copy, the unmap), and on a small host that burst
//! lands beside the services it traces.
//!
//! Invariant: the mapping lives as long as the value; a file truncated
//! while mapped would fault on access (as with any mapped ELF reader), and
//! the library files read here are the ones running processes map.

use std::{fs::File, os::fd::AsRawFd as _, path::Path};

pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: a read-only private mapping owned by the value.
unsafe impl Send for Mapped {}
// SAFETY: as above; nothing writes through it.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Maps `path` whole; an empty file maps to an empty slice.
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::other("file too large to map"))?;
        if len == 0 {
            return Ok(Self {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh read-only private mapping of an open file; the
        // descriptor may be closed after mmap returns.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `len` readable bytes mapped at `ptr` for the value's life.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: the mapping made in `open`, unmapped once.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mapped_file_reads_as_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"\x7fELF and the rest").unwrap();
        assert_eq!(
            &*super::Mapped::open(&path).unwrap(),
            b"\x7fELF and the rest"
        );
        std::fs::write(&path, b"").unwrap();
        assert!(super::Mapped::open(&path).unwrap().is_empty());
        assert!(super::Mapped::open(dir.path().join("missing")).is_err());
    }
}
