//! The `direct` backend's buffer pool: segment data read and written with `O_DIRECT` into
//! frames the daemon manages itself, instead of the kernel's page cache (the buffer-pool side
//! of the mmap-versus-buffer-pool comparison, Crotty, Leis and Pavlo, CIDR 2022).
//!
//! - Frames of one page (4 KiB) in one anonymous mapping (page-aligned, as `O_DIRECT` needs).
//! - A page table from (segment, page) to frame, in shards so that threads on different pages
//!   rarely share a lock; each frame has its own lock, taken before any shard lock.
//! - Eviction by CLOCK (second chance): one reference bit per frame, a hand that sweeps and
//!   clears them. Chosen over LRU because a hit then costs one relaxed store, not a list update
//!   under a lock, and over LRU-K/2Q because the experiments compare access paths, not policies.
//! - Write-through: a write updates its frames and is written to the segment file (one
//!   `pwritev` per request and segment) before it is answered, so a write that returned
//!   survives `kill -9` of the daemon as with the other backends, frames are never dirty, and
//!   fsync is one `fdatasync` (the device cache flush and the block conversions).
//! - A page being loaded is entered in the table before it is read, with its frame locked, so
//!   two threads never load the same page into two frames, and no stale copy can be entered
//!   after a newer write.

use std::collections::HashMap;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock, RwLockWriteGuard};

pub const FRAME: usize = 4096;
const SHARDS: usize = 64;
const EMPTY: u64 = u64::MAX;
/// The smallest pool: 4 MiB, so that the frames a request holds at once (see
/// [`Pool::write`]) are never more than an eighth of the pool.
pub const MIN_FRAMES: usize = 1024;

/// Counters `mmapfs stats` shows.
#[derive(Default, Debug)]
pub struct PoolCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    /// Pages written to the segment files.
    pub writes: AtomicU64,
}

struct Frame {
    /// (segment << 32 | page) held, or EMPTY. Changed only with the frame's lock held for
    /// writing; read under the lock to check a table lookup is still true.
    key: AtomicU64,
    referenced: AtomicBool,
    lock: RwLock<()>,
}

pub struct Pool {
    mem: memmap2::MmapMut,
    frames: Box<[Frame]>,
    table: Vec<Mutex<HashMap<u64, u32>>>,
    hand: AtomicUsize,
    /// Frames held per segment (what `resident` reports), one counter per possible segment.
    per_segment: Box<[AtomicU64]>,
    pub counters: PoolCounters,
}

fn key(seg: u32, page: u64) -> u64 {
    (seg as u64) << 32 | page
}

/// A frame locked for writing, with the page it holds (or will hold).
struct Held<'a> {
    frame: u32,
    _g: RwLockWriteGuard<'a, ()>,
}

impl Pool {
    /// A pool of `bytes` (rounded down to whole frames, at least [`MIN_FRAMES`]) for a store of
    /// at most `segments` segments.
    pub fn new(bytes: u64, segments: u64) -> io::Result<Pool> {
        let n = ((bytes as usize) / FRAME).max(MIN_FRAMES);
        let mem = memmap2::MmapOptions::new().len(n * FRAME).map_anon()?;
        let frames = (0..n)
            .map(|_| Frame { key: AtomicU64::new(EMPTY), referenced: AtomicBool::new(false), lock: RwLock::new(()) })
            .collect();
        Ok(Pool {
            mem,
            frames,
            table: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hand: AtomicUsize::new(0),
            per_segment: (0..segments).map(|_| AtomicU64::new(0)).collect(),
            counters: PoolCounters::default(),
        })
    }

    pub fn bytes(&self) -> u64 {
        (self.frames.len() * FRAME) as u64
    }

    fn shard(&self, k: u64) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        let h = (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS;
        self.table[h].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn frame_ptr(&self, f: u32) -> *mut u8 {
        // SAFETY: `f` indexes a frame of the pool, so the offset is inside the mapping.
        unsafe { self.mem.as_ptr().add(f as usize * FRAME) as *mut u8 }
    }

    fn count(&self, seg: u32, delta: i64) {
        if let Some(c) = self.per_segment.get(seg as usize) {
            c.fetch_add(delta as u64, Ordering::Relaxed); // wrapping: -1 is u64::MAX
        }
    }

    /// Frames holding pages of segment `seg`.
    pub fn resident(&self, seg: u32) -> u64 {
        self.per_segment.get(seg as usize).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Finds a frame to reuse (CLOCK), write-locked and out of the table.
    fn victim(&self) -> Held<'_> {
        let n = self.frames.len();
        loop {
            let i = self.hand.fetch_add(1, Ordering::Relaxed) % n;
            let f = &self.frames[i];
            if f.referenced.swap(false, Ordering::Relaxed) {
                continue;
            }
            let Ok(g) = f.lock.try_write() else { continue };
            let old = f.key.load(Ordering::Relaxed);
            if old != EMPTY {
                self.shard(old).remove(&old);
                f.key.store(EMPTY, Ordering::Relaxed);
                self.count((old >> 32) as u32, -1);
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
            return Held { frame: i as u32, _g: g };
        }
    }

    /// The frame holding page `page` of segment `seg`, write-locked; loaded from `file` unless
    /// `whole` (the caller overwrites all of it).
    fn get_write(&self, file: &std::fs::File, seg: u32, page: u64, whole: bool) -> io::Result<Held<'_>> {
        let k = key(seg, page);
        loop {
            let found = self.shard(k).get(&k).copied();
            if let Some(i) = found {
                let f = &self.frames[i as usize];
                let g = f.lock.write().unwrap_or_else(|p| p.into_inner());
                if f.key.load(Ordering::Relaxed) != k {
                    continue; // evicted between the lookup and the lock
                }
                f.referenced.store(true, Ordering::Relaxed);
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Held { frame: i, _g: g });
            }
            let v = self.victim();
            {
                let mut s = self.shard(k);
                if s.contains_key(&k) {
                    continue; // another thread is loading it: use that frame (v goes back empty)
                }
                s.insert(k, v.frame);
                self.frames[v.frame as usize].key.store(k, Ordering::Relaxed);
            }
            self.count(seg, 1);
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            self.frames[v.frame as usize].referenced.store(true, Ordering::Relaxed);
            if !whole && let Err(e) = self.load(file, v.frame, page) {
                self.drop_frame(v.frame, k);
                return Err(e);
            }
            return Ok(v);
        }
    }

    /// Takes a frame (write-locked by the caller) out of the table.
    fn drop_frame(&self, frame: u32, k: u64) {
        self.shard(k).remove(&k);
        self.frames[frame as usize].key.store(EMPTY, Ordering::Relaxed);
        self.count((k >> 32) as u32, -1);
    }

    fn load(&self, file: &std::fs::File, frame: u32, page: u64) -> io::Result<()> {
        // SAFETY: the frame is write-locked by the caller, page-aligned and FRAME bytes long.
        let n =
            unsafe { libc::pread(file.as_raw_fd(), self.frame_ptr(frame).cast(), FRAME, (page * FRAME as u64) as i64) };
        if n != FRAME as isize {
            return Err(if n < 0 { io::Error::last_os_error() } else { io::Error::from(io::ErrorKind::UnexpectedEof) });
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes at `off` of segment `seg` (read through `file`) into `buf`.
    pub fn read(&self, file: &std::fs::File, seg: u32, off: usize, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = off + done;
            let (page, inner) = ((at / FRAME) as u64, at % FRAME);
            let n = (FRAME - inner).min(buf.len() - done);
            let k = key(seg, page);
            // Shared lock for a hit; a miss loads under the write lock.
            let found = self.shard(k).get(&k).copied();
            let copied = match found {
                Some(i) => {
                    let f = &self.frames[i as usize];
                    let _g = f.lock.read().unwrap_or_else(|p| p.into_inner());
                    if f.key.load(Ordering::Relaxed) == k {
                        f.referenced.store(true, Ordering::Relaxed);
                        self.counters.hits.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: the frame is read-locked and holds page `page`; `inner + n`
                        // is within the frame and `buf[done..done + n]` within the buffer.
                        unsafe {
                            std::ptr::copy_nonoverlapping(self.frame_ptr(i).add(inner), buf[done..].as_mut_ptr(), n)
                        };
                        true
                    } else {
                        false
                    }
                }
                None => false,
            };
            if !copied {
                let h = self.get_write(file, seg, page, false)?;
                // SAFETY: as above, under the write lock.
                unsafe {
                    std::ptr::copy_nonoverlapping(self.frame_ptr(h.frame).add(inner), buf[done..].as_mut_ptr(), n)
                };
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` (or zeros, when `None`, for `len` bytes) at `off` of segment `seg`: into
    /// the frames, then through to `file` with one `pwritev` before returning.
    pub fn write(&self, file: &std::fs::File, seg: u32, off: usize, data: Option<&[u8]>, len: usize) -> io::Result<()> {
        // At most an eighth of the pool locked at once, so other requests always find frames.
        let step = (self.frames.len() / 8).min(1024) * FRAME;
        let mut at = off;
        while at < off + len {
            let n = (off + len - at).min(step - at % FRAME);
            self.write_some(file, seg, at, data.map(|d| &d[at - off..at - off + n]), n)?;
            at += n;
        }
        Ok(())
    }

    fn write_some(
        &self,
        file: &std::fs::File,
        seg: u32,
        off: usize,
        data: Option<&[u8]>,
        len: usize,
    ) -> io::Result<()> {
        let first = off / FRAME;
        let last = (off + len).div_ceil(FRAME);
        let mut held = Vec::with_capacity(last - first);
        for page in first..last {
            let (from, to) = ((page * FRAME).max(off), ((page + 1) * FRAME).min(off + len));
            let whole = to - from == FRAME;
            let h = self.get_write(file, seg, page as u64, whole)?;
            // SAFETY: the frame is write-locked; `from - page*FRAME .. to - page*FRAME` lies in it.
            unsafe {
                let dst = self.frame_ptr(h.frame).add(from - page * FRAME);
                match data {
                    Some(d) => std::ptr::copy_nonoverlapping(d[from - off..].as_ptr(), dst, to - from),
                    None => std::ptr::write_bytes(dst, 0, to - from),
                }
            }
            held.push(h);
        }
        // Written through before the request is answered (one pwritev; IOV_MAX is 1024).
        let iov: Vec<libc::iovec> =
            held.iter().map(|h| libc::iovec { iov_base: self.frame_ptr(h.frame).cast(), iov_len: FRAME }).collect();
        crate::store::faults::check(crate::store::faults::Point::Msync)?;
        // SAFETY: every iovec points at a write-locked frame of FRAME bytes.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), iov.len() as i32, (first * FRAME) as i64) };
        if n != (iov.len() * FRAME) as isize {
            return Err(if n < 0 { io::Error::last_os_error() } else { io::Error::from(io::ErrorKind::WriteZero) });
        }
        self.counters.writes.fetch_add(held.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Forgets the pages of `off..off+len` of segment `seg` (after a hole was punched there).
    pub fn forget(&self, seg: u32, off: usize, len: usize) {
        for page in (off / FRAME)..(off + len).div_ceil(FRAME) {
            let k = key(seg, page as u64);
            let Some(i) = self.shard(k).get(&k).copied() else { continue };
            let f = &self.frames[i as usize];
            let _g = f.lock.write().unwrap_or_else(|p| p.into_inner());
            if f.key.load(Ordering::Relaxed) == k {
                self.drop_frame(i, k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::sync::Arc;

    /// Four threads read and write random ranges of two 16 MiB segments through a 4 MiB pool
    /// (so pages are evicted all the time), each thread in its own quarter; every read matches
    /// the model, and the files on disk hold exactly the model (written through).
    #[test]
    fn reads_and_writes_through_a_small_pool_match_a_model() {
        const SEG: usize = 16 << 20;
        let d = tempfile::tempdir().unwrap();
        let pool = Arc::new(Pool::new(0, 4).unwrap());
        assert_eq!(pool.bytes(), (MIN_FRAMES * FRAME) as u64);
        let files: Vec<Arc<std::fs::File>> = (0..2)
            .map(|i| {
                let p = d.path().join(format!("{i}.seg"));
                std::fs::File::create(&p).unwrap().set_len(SEG as u64).unwrap();
                let f = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&p);
                Arc::new(f.unwrap())
            })
            .collect();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (pool, files) = (pool.clone(), files.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng::new(t + 1);
                    let (seg, base) = ((t % 2) as u32, (t as usize / 2) * SEG / 2);
                    let mut model = vec![0u8; SEG / 2];
                    for i in 0..3000 {
                        let off = rng.below(model.len() as u64 - 1) as usize;
                        let len = 1 + rng.below((model.len() - off).min(300_000) as u64) as usize;
                        if i % 2 == 0 {
                            let mut d = vec![0u8; len];
                            rng.fill(&mut d);
                            let zero = rng.below(8) == 0;
                            let data = (!zero).then_some(&d[..]);
                            pool.write(&files[seg as usize], seg, base + off, data, len).unwrap();
                            if zero {
                                d.fill(0);
                            }
                            model[off..off + len].copy_from_slice(&d);
                        } else {
                            let mut b = vec![0u8; len];
                            pool.read(&files[seg as usize], seg, base + off, &mut b).unwrap();
                            assert!(b == model[off..off + len], "thread {t}, op {i}: read {off}+{len}");
                        }
                    }
                    (seg, base, model)
                })
            })
            .collect();
        let models: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let c = &pool.counters;
        assert!(c.evictions.load(Ordering::Relaxed) > 10_000, "{c:?}");
        assert!(c.hits.load(Ordering::Relaxed) > 0 && c.writes.load(Ordering::Relaxed) > 0, "{c:?}");
        for (seg, base, model) in models {
            let on_disk = std::fs::read(d.path().join(format!("{seg}.seg"))).unwrap();
            assert!(on_disk[base..base + model.len()] == model[..], "segment {seg} at {base} on disk");
        }
        assert!(pool.resident(0) + pool.resident(1) <= MIN_FRAMES as u64);
    }

    /// Forgotten pages are read again from the file.
    #[test]
    fn forget_drops_the_cached_pages() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, vec![1u8; 1 << 20]).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&p).unwrap();
        let pool = Pool::new(0, 4).unwrap();
        let mut b = vec![0u8; 8192];
        pool.read(&f, 0, 0, &mut b).unwrap();
        assert_eq!(pool.resident(0), 2);
        // Changed behind the pool (as a punched hole reads zero): the pool still has the old bytes.
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().write_all_at(&[9u8; 8192], 0).unwrap();
        pool.read(&f, 0, 0, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 1));
        pool.forget(0, 0, 8192);
        assert_eq!(pool.resident(0), 0);
        pool.read(&f, 0, 0, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 9));
    }
}
