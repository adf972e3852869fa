//! Test support shared by `tests/`, the coherence binary (`mmapfs-coherence`) and the
//! scripts' helpers: a mapping of a file that other processes write at the same time, and
//! waiting for a mount to appear or a child to exit. Built only with the `testing` feature:
//! not part of the filesystem.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A mapping of (the start of) a file, unmapped on drop.
///
/// Other processes store into a shared mapping while this one reads it, so it never hands out
/// a `&[u8]` into it (that would promise Rust the bytes do not change while borrowed). Every
/// access goes through atomic loads and stores (relaxed: the kernel's page-cache coherence is
/// what is under test, not ordering), which are sound on memory others change concurrently.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory reached only through atomics; it may be used and
// dropped from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above: every access is atomic.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `f` read-write, `MAP_SHARED` or `MAP_PRIVATE`.
    pub fn new(f: &File, len: usize, shared: bool) -> std::io::Result<Mapping> {
        let flags = if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
        // SAFETY: mapping a file we hold open; the result is checked before use.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, f.as_raw_fd(), 0)
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn word(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off + 8 <= self.len, "word {off} outside {}", self.len);
        // SAFETY: in bounds and 8-byte aligned (the mapping is page-aligned); the memory lives
        // as long as `self`, and is only ever accessed atomically through this type.
        unsafe { AtomicU64::from_ptr(self.ptr.add(off).cast()) }
    }

    fn byte(&self, off: usize) -> &AtomicU8 {
        assert!(off < self.len, "byte {off} outside {}", self.len);
        // SAFETY: in bounds; the memory lives as long as `self` and is accessed atomically.
        unsafe { AtomicU8::from_ptr(self.ptr.add(off)) }
    }

    /// Stores `v` at the 8-byte aligned offset `off`.
    pub fn store(&self, off: usize, v: u64) {
        self.word(off).store(v, Ordering::Relaxed);
    }

    /// Loads the word at the 8-byte aligned offset `off`.
    pub fn load(&self, off: usize) -> u64 {
        self.word(off).load(Ordering::Relaxed)
    }

    /// Copies `data` into the mapping at `off`.
    pub fn copy_in(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        for (i, &b) in data.iter().enumerate() {
            self.byte(off + i).store(b, Ordering::Relaxed);
        }
    }

    /// A copy of `len` bytes at `off`, as they are now.
    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        (off..off + len).map(|i| self.byte(i).load(Ordering::Relaxed)).collect()
    }

    /// True if the bytes at `off` are `want` right now (compared a word at a time where the
    /// offset allows).
    pub fn equals(&self, off: usize, want: &[u8]) -> bool {
        assert!(off + want.len() <= self.len);
        let mut i = 0;
        while i < want.len() {
            let at = off + i;
            if at.is_multiple_of(8) && want.len() - i >= 8 {
                let w = u64::from_ne_bytes(want[i..i + 8].try_into().expect("8 bytes"));
                if self.load(at) != w {
                    return false;
                }
                i += 8;
            } else {
                if self.byte(at).load(Ordering::Relaxed) != want[i] {
                    return false;
                }
                i += 1;
            }
        }
        true
    }

    /// `msync(MS_SYNC)` of the whole mapping.
    pub fn msync(&self) -> std::io::Result<()> {
        // SAFETY: the whole live mapping.
        if unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` until the word at `off` holds `v`.
    pub fn wait_for(&self, off: usize, v: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.load(off) == v {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Waits until `mnt` is mounted (compared as a canonical path once it exists); returns the
/// canonical mountpoint. Fails early if `child` (the daemon) exits.
pub fn wait_mounted(mnt: &Path, child: &mut Child, timeout: Duration) -> Result<std::path::PathBuf, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("daemon exited with {status}"));
        }
        if let Ok(c) = mnt.canonicalize()
            && crate::mounts::is_mounted(&c)
        {
            return Ok(c);
        }
        if Instant::now() > deadline {
            return Err(format!("{} was not mounted within {timeout:?}", mnt.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_mapping_reads_and_writes_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let f = File::options().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
        f.set_len(8192).unwrap();
        let m = Mapping::new(&f, 8192, true).unwrap();
        m.store(8, 0x0102_0304_0506_0708);
        m.copy_in(4096, b"hello");
        assert_eq!(m.load(8), 0x0102_0304_0506_0708);
        assert_eq!(m.read(4095, 7), b"\0hello\0");
        assert!(m.equals(4095, b"\0hello\0") && m.equals(0, &m.read(0, 8192)));
        assert!(!m.equals(4096, b"hellO") && !m.equals(8, &[8, 7, 6, 5, 4, 3, 2, 2]));
        m.msync().unwrap();
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(&on_disk[4096..4101], b"hello");
        assert!(m.wait_for(8, 0x0102_0304_0506_0708, Duration::from_millis(1)));
        assert!(!m.wait_for(16, 1, Duration::from_millis(1)));
    }
}
