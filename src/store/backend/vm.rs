//! The `vm` backend: a buffer pool in the style of vmcache (Leis, Alhomssi, Ziegler, Loeck and
//! Dietrich, "Virtual-Memory Assisted Buffer Management", SIGMOD 2023).
//!
//! - **One virtual region for every page of the store**, addressed by page number (segment ×
//!   pages per segment + page): a private anonymous mapping (`MAP_NORESERVE`, `MADV_NOHUGEPAGE`)
//!   as large as the store's capacity. The page table does the translation that the `direct`
//!   backend's hash table does: a hit costs an address computation and a state-word CAS.
//! - **Explicit I/O**: a missing page is read into its place in the region with `O_DIRECT`
//!   `pread` (the kernel faults in an anonymous page as the target), so nothing is cached twice;
//!   a write updates the pages and is written through with one `pwritev` before it is answered,
//!   as with `direct` (so a write that returned survives `kill -9`, and fsync is one
//!   `fdatasync`).
//! - **Explicit eviction**: when the pool is nearly full, pages are evicted in batches of
//!   [`BATCH`] with `madvise(MADV_DONTNEED)`, which frees their memory and — the paper's point —
//!   costs page-table updates and TLB shootdowns on every CPU that runs a thread of the daemon.
//! - **A page-state word per page** (an array as large as the region has pages, zero = evicted,
//!   so untouched parts cost no memory) holds the page's latch and residency: evicted, unlocked,
//!   marked (a CLOCK candidate), locked exclusively, or a count of shared holders.
//! - **The resident set** for eviction is a ring of slots the size of the pool, swept by a CLOCK
//!   hand: a page unlocked is marked, a page still marked a sweep later (nobody read it) is
//!   locked and evicted. A slot whose page was evicted by another path (`forget`) is free.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::pool::MIN_FRAMES;
use super::{PoolFigures, SegmentFile, SegmentIo};
use crate::store::faults::{self, Point};
use crate::store::files;

const PAGE: usize = 4096;
/// Pages evicted at a time: one pass of the hand, one `madvise` per run of neighbours.
const BATCH: usize = 64;

/// Page states (the low values of a page's state word).
const EVICTED: u64 = 0;
const UNLOCKED: u64 = 1;
/// Resident, unlocked, and not read since the hand last passed: evicted when it comes again.
const MARKED: u64 = 2;
const LOCKED: u64 = 3;
/// `SHARED + n`: resident, read by n ≥ 1 holders.
const SHARED: u64 = 3;

#[derive(Default, Debug)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    writes: AtomicU64,
    batches: AtomicU64,
}

/// The store-wide cache: the region, the state words, the resident set.
struct Cache {
    region: *mut u8,
    region_len: usize,
    pages_per_segment: usize,
    state: Words,
    /// Page number + 1 of a resident page, or 0.
    slots: Box<[AtomicU64]>,
    hand: AtomicUsize,
    resident: AtomicUsize,
    per_segment: Box<[AtomicU64]>,
    /// One evicter at a time: the others wait for its batch and look again.
    evicting: Mutex<()>,
    counters: Counters,
}

// SAFETY: `region` is a mapping owned by the cache for its whole life; every access to a page
// of it happens under that page's latch (its state word), which serialises writers against
// readers across threads.
unsafe impl Send for Cache {}
// SAFETY: as above.
unsafe impl Sync for Cache {}

impl Drop for Cache {
    fn drop(&mut self) {
        // SAFETY: the region was mapped with this length in `Cache::new` and nothing borrows it
        // any more (the cache is being dropped).
        unsafe { libc::munmap(self.region.cast(), self.region_len) };
    }
}

impl Cache {
    fn new(pool_size: u64, max_segments: u64, segment_size: u64) -> io::Result<Cache> {
        let region_len = (max_segments * segment_size) as usize;
        let pages = region_len / PAGE;
        let frames = ((pool_size as usize) / PAGE).max(MIN_FRAMES);
        // SAFETY: an anonymous mapping with no address hint; the result is checked.
        let region = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                region_len.max(PAGE),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if region == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: advice on the mapping just made; failure only loses the hint.
        unsafe { libc::madvise(region, region_len.max(PAGE), libc::MADV_NOHUGEPAGE) };
        Ok(Cache {
            region: region.cast(),
            region_len: region_len.max(PAGE),
            pages_per_segment: segment_size as usize / PAGE,
            // Zeroed memory from the allocator: pages of it the store never touches stay
            // unbacked, so a large capacity costs address space, not memory.
            state: Words::new(pages)?,
            slots: zeroed(frames),
            hand: AtomicUsize::new(0),
            resident: AtomicUsize::new(0),
            per_segment: zeroed(max_segments as usize),
            evicting: Mutex::new(()),
            counters: Counters::default(),
        })
    }

    fn page_ptr(&self, pid: usize) -> *mut u8 {
        // SAFETY: `pid` is a page of the region (the segment checks every range), so the
        // offset is inside the mapping.
        unsafe { self.region.add(pid * PAGE) }
    }

    fn count(&self, pid: usize, delta: i64) {
        let seg = pid / self.pages_per_segment;
        self.per_segment[seg].fetch_add(delta as u64, Ordering::Relaxed); // wrapping: -1
    }

    /// Locks page `pid` exclusively, reading it from `file` first when it is not resident and
    /// `load` (a caller that overwrites all of it passes false).
    fn lock(&self, file: &File, pid: usize, load: bool) -> io::Result<()> {
        let st = &self.state[pid];
        loop {
            match st.load(Ordering::Acquire) {
                EVICTED => {
                    if st.compare_exchange(EVICTED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_err() {
                        continue;
                    }
                    if let Err(e) = self.bring_in(file, pid, load) {
                        st.store(EVICTED, Ordering::Release);
                        return Err(e);
                    }
                    return Ok(());
                }
                s @ (UNLOCKED | MARKED) => {
                    if st.compare_exchange(s, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                        self.counters.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                }
                _ => std::thread::yield_now(),
            }
        }
    }

    fn unlock(&self, pid: usize) {
        self.state[pid].store(UNLOCKED, Ordering::Release);
    }

    /// Makes page `pid` (locked, evicted) resident: room in the pool, the read, a slot.
    fn bring_in(&self, file: &File, pid: usize, load: bool) -> io::Result<()> {
        self.make_room();
        if load {
            let at = (pid % self.pages_per_segment * PAGE) as i64;
            // SAFETY: the page is locked exclusively by this thread; it is PAGE bytes of the
            // region, page-aligned as O_DIRECT needs.
            let n = unsafe { libc::pread(file.as_raw_fd(), self.page_ptr(pid).cast(), PAGE, at) };
            if n != PAGE as isize {
                let e = if n < 0 { io::Error::last_os_error() } else { io::Error::from(io::ErrorKind::UnexpectedEof) };
                self.release_memory(pid, 1);
                return Err(e);
            }
        }
        self.resident.fetch_add(1, Ordering::Relaxed);
        self.count(pid, 1);
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        self.take_slot(pid);
        Ok(())
    }

    /// Puts `pid` into a free slot: empty, or holding a page evicted since.
    fn take_slot(&self, pid: usize) {
        let n = self.slots.len();
        loop {
            let i = self.hand.fetch_add(1, Ordering::Relaxed) % n;
            let v = self.slots[i].load(Ordering::Acquire);
            let free = v == 0 || self.state[(v - 1) as usize].load(Ordering::Acquire) == EVICTED;
            if free && self.slots[i].compare_exchange(v, pid as u64 + 1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return;
            }
            if self.resident.load(Ordering::Relaxed) >= n {
                self.make_room();
            }
        }
    }

    /// Evicts a batch when fewer than [`BATCH`] frames are free.
    fn make_room(&self) {
        let cap = self.slots.len();
        if self.resident.load(Ordering::Relaxed) + BATCH < cap {
            return;
        }
        let _one = self.evicting.lock().unwrap_or_else(|p| p.into_inner());
        if self.resident.load(Ordering::Relaxed) + BATCH < cap {
            return; // another evicter made room meanwhile
        }
        let mut batch: Vec<(usize, u64)> = Vec::with_capacity(BATCH);
        // Two passes of the hand at most: the first marks, the second takes.
        for _ in 0..2 * cap {
            if batch.len() == BATCH {
                break;
            }
            let i = self.hand.fetch_add(1, Ordering::Relaxed) % cap;
            let v = self.slots[i].load(Ordering::Acquire);
            if v == 0 {
                continue;
            }
            let st = &self.state[(v - 1) as usize];
            match st.load(Ordering::Acquire) {
                UNLOCKED => {
                    let _ = st.compare_exchange(UNLOCKED, MARKED, Ordering::AcqRel, Ordering::Relaxed);
                }
                MARKED if st.compare_exchange(MARKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok() => {
                    batch.push((i, v));
                }
                _ => {} // locked, read right now, or evicted (a free slot)
            }
        }
        let mut pids: Vec<usize> = batch.iter().map(|&(_, v)| (v - 1) as usize).collect();
        pids.sort_unstable();
        let mut run = 0;
        while run < pids.len() {
            let mut end = run + 1;
            while end < pids.len() && pids[end] == pids[end - 1] + 1 {
                end += 1;
            }
            self.release_memory(pids[run], end - run);
            run = end;
        }
        for &(i, v) in &batch {
            let pid = (v - 1) as usize;
            self.count(pid, -1);
            self.state[pid].store(EVICTED, Ordering::Release);
            let _ = self.slots[i].compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        self.resident.fetch_sub(batch.len(), Ordering::Relaxed);
        self.counters.evictions.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives the memory of `n` pages from `pid` back (`MADV_DONTNEED`: they read zero until
    /// loaded again). The pages are locked by the caller.
    fn release_memory(&self, pid: usize, n: usize) {
        // SAFETY: the pages are inside the region and locked; nobody holds a reference into
        // them. MADV_DONTNEED on private anonymous memory only drops their contents.
        unsafe { libc::madvise(self.page_ptr(pid).cast(), n * PAGE, libc::MADV_DONTNEED) };
    }

    /// Copies `buf.len()` bytes from byte `off` of page `first` on, under shared latches.
    fn read(&self, file: &File, first: usize, off: usize, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = off + done;
            let pid = first + at / PAGE;
            let (inner, n) = (at % PAGE, (PAGE - at % PAGE).min(buf.len() - done));
            let st = &self.state[pid];
            let shared = loop {
                match st.load(Ordering::Acquire) {
                    EVICTED => {
                        self.lock(file, pid, true)?;
                        break false;
                    }
                    LOCKED => std::thread::yield_now(),
                    s => {
                        let to = if s == UNLOCKED || s == MARKED { SHARED + 1 } else { s + 1 };
                        if st.compare_exchange(s, to, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                            self.counters.hits.fetch_add(1, Ordering::Relaxed);
                            break true;
                        }
                    }
                }
            };
            // SAFETY: the page is latched (shared or exclusive) and resident; `inner + n` is
            // within it and `buf[done..done + n]` within the buffer.
            unsafe { std::ptr::copy_nonoverlapping(self.page_ptr(pid).add(inner), buf[done..].as_mut_ptr(), n) };
            if shared {
                let _ = st.fetch_update(Ordering::Release, Ordering::Relaxed, |s| {
                    Some(if s == SHARED + 1 { UNLOCKED } else { s - 1 })
                });
            } else {
                self.unlock(pid);
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` (zeros when `None`) of `len` bytes at byte `off` of page `first` on: into
    /// the pages, then through to `file` (one `pwritev` per chunk) before returning.
    fn write(&self, file: &File, first: usize, off: usize, data: Option<&[u8]>, len: usize) -> io::Result<()> {
        // At most an eighth of the pool latched at once, so other requests always find frames.
        let step = (self.slots.len() / 8).min(1024) * PAGE;
        let mut at = off;
        while at < off + len {
            let n = (off + len - at).min(step - at % PAGE);
            self.write_some(file, first, at, data.map(|d| &d[at - off..at - off + n]), n)?;
            at += n;
        }
        Ok(())
    }

    fn write_some(&self, file: &File, first: usize, off: usize, data: Option<&[u8]>, len: usize) -> io::Result<()> {
        let (lo, hi) = (off / PAGE, (off + len).div_ceil(PAGE));
        let mut locked = 0;
        let r = (|| -> io::Result<()> {
            for p in lo..hi {
                let (from, to) = ((p * PAGE).max(off), ((p + 1) * PAGE).min(off + len));
                self.lock(file, first + p, to - from != PAGE)?;
                locked += 1;
                // SAFETY: the page is locked exclusively; `from - p*PAGE .. to - p*PAGE` is in it.
                unsafe {
                    let dst = self.page_ptr(first + p).add(from - p * PAGE);
                    match data {
                        Some(d) => std::ptr::copy_nonoverlapping(d[from - off..].as_ptr(), dst, to - from),
                        None => std::ptr::write_bytes(dst, 0, to - from),
                    }
                }
            }
            faults::check(Point::Msync)?;
            let at = (lo * PAGE) as i64;
            // The pages are contiguous in the region: one buffer, written with O_DIRECT.
            // SAFETY: pages lo..hi of this segment are locked and resident, page-aligned.
            let n = unsafe { libc::pwrite(file.as_raw_fd(), self.page_ptr(first + lo).cast(), (hi - lo) * PAGE, at) };
            if n != ((hi - lo) * PAGE) as isize {
                return Err(if n < 0 { io::Error::last_os_error() } else { io::Error::from(io::ErrorKind::WriteZero) });
            }
            self.counters.writes.fetch_add((hi - lo) as u64, Ordering::Relaxed);
            Ok(())
        })();
        for p in lo..lo + locked {
            self.unlock(first + p);
        }
        r
    }

    /// Evicts the resident pages among `n` pages from `pid` (their host space was punched).
    fn forget(&self, pid: usize, n: usize) {
        for p in pid..pid + n {
            let st = &self.state[p];
            loop {
                match st.load(Ordering::Acquire) {
                    EVICTED => break,
                    s @ (UNLOCKED | MARKED) => {
                        if st.compare_exchange(s, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                            self.release_memory(p, 1);
                            self.count(p, -1);
                            self.resident.fetch_sub(1, Ordering::Relaxed);
                            st.store(EVICTED, Ordering::Release);
                            break;
                        }
                    }
                    _ => std::thread::yield_now(),
                }
            }
        }
    }
}

/// The page-state words: one per page of the capacity, in their own anonymous mapping
/// (`MAP_NORESERVE`: a store of many TiB costs address space, and memory only for the pages
/// of words its data touches; an allocation that large could abort the daemon instead).
struct Words {
    ptr: *mut AtomicU64,
    len: usize,
}

// SAFETY: the words are atomics in memory owned by this value for its whole life.
unsafe impl Send for Words {}
// SAFETY: as above.
unsafe impl Sync for Words {}

impl Words {
    fn new(len: usize) -> io::Result<Words> {
        let bytes = (len * 8).max(PAGE);
        // SAFETY: an anonymous mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("the vm backend's page states ({bytes} bytes): {e}")));
        }
        Ok(Words { ptr: p.cast(), len })
    }
}

impl std::ops::Deref for Words {
    type Target = [AtomicU64];
    fn deref(&self) -> &[AtomicU64] {
        // SAFETY: the mapping holds `len` zero-initialised (fresh anonymous memory) words, lives
        // as long as `self`, and is only ever accessed through atomics.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; nothing borrows it any more.
        unsafe { libc::munmap(self.ptr.cast(), (self.len * 8).max(PAGE)) };
    }
}

/// A zero-filled slice of atomics, from the allocator's zeroed memory (large ones come as fresh
/// anonymous pages, backed only once touched). For the pool-sized arrays.
fn zeroed(n: usize) -> Box<[AtomicU64]> {
    // SAFETY: all-zero bytes are a valid AtomicU64 (0).
    unsafe { Box::<[AtomicU64]>::new_zeroed_slice(n).assume_init() }
}

pub(super) struct Engine {
    cache: Arc<Cache>,
}

impl Engine {
    pub(super) fn new(pool_size: u64, max_segments: u64, segment_size: u64) -> io::Result<Engine> {
        Ok(Engine { cache: Arc::new(Cache::new(pool_size, max_segments, segment_size)?) })
    }
}

impl super::Engine for Engine {
    fn open(&self, seg: SegmentFile<'_>) -> io::Result<Box<dyn SegmentIo>> {
        let direct = files::open_with(seg.path, OpenOptions::new().read(true).write(true), libc::O_DIRECT)?;
        let first = seg.index as usize * self.cache.pages_per_segment;
        if seg.len != self.cache.pages_per_segment * PAGE || first >= self.cache.state.len() {
            return Err(io::Error::other(format!("{}: not a segment of this store's size", seg.path.display())));
        }
        Ok(Box::new(Vm { cache: self.cache.clone(), first, direct, file: seg.file.clone() }))
    }

    fn pool(&self) -> Option<PoolFigures> {
        let c = &self.cache.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(PoolFigures {
            bytes: (self.cache.slots.len() * PAGE) as u64,
            hits: r(&c.hits),
            misses: r(&c.misses),
            evictions: r(&c.evictions),
            writes: r(&c.writes),
            eviction_batches: Some(r(&c.batches)),
        })
    }
}

/// A segment whose pages live in the region.
struct Vm {
    cache: Arc<Cache>,
    /// Page number of the segment's first page.
    first: usize,
    /// The segment file opened with `O_DIRECT`.
    direct: File,
    /// The same file without `O_DIRECT`, for `fdatasync`.
    file: Arc<File>,
}

impl SegmentIo for Vm {
    fn read_at(&self, off: usize, buf: &mut [u8]) -> io::Result<()> {
        self.cache.read(&self.direct, self.first, off, buf)
    }

    fn write_at(&self, off: usize, data: &[u8]) -> io::Result<()> {
        self.cache.write(&self.direct, self.first, off, Some(data), data.len())
    }

    fn zero(&self, off: usize, len: usize) -> io::Result<()> {
        self.cache.write(&self.direct, self.first, off, None, len)
    }

    fn sync_range(&self, _off: usize, _len: usize) -> io::Result<()> {
        self.file.sync_data()
    }

    fn syncs_whole_file(&self) -> bool {
        true
    }

    fn uses_page_cache(&self) -> bool {
        false
    }

    fn resident(&self) -> Option<u64> {
        let seg = self.first / self.cache.pages_per_segment;
        Some(self.cache.per_segment[seg].load(Ordering::Relaxed) * PAGE as u64)
    }

    fn forget(&self, off: usize, len: usize) {
        let (lo, hi) = (off / PAGE, (off + len).div_ceil(PAGE));
        self.cache.forget(self.first + lo, hi - lo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};

    fn direct(p: &std::path::Path) -> File {
        OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(p).unwrap()
    }

    /// Four threads read and write random ranges of two 16 MiB segments through a 4 MiB pool
    /// (pages evicted in batches all the time), each in its own quarter; every read matches
    /// the model, and the files hold exactly the model (written through).
    #[test]
    fn reads_and_writes_through_a_small_pool_match_a_model() {
        const SEG: usize = 16 << 20;
        let d = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(0, 4, SEG as u64).unwrap());
        assert_eq!(cache.slots.len(), MIN_FRAMES);
        let files: Vec<Arc<File>> = (0..2)
            .map(|i| {
                let p = d.path().join(format!("{i}.seg"));
                File::create(&p).unwrap().set_len(SEG as u64).unwrap();
                Arc::new(direct(&p))
            })
            .collect();
        let pps = SEG / PAGE;
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (cache, files) = (cache.clone(), files.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng::new(t + 11);
                    let (seg, base) = ((t % 2) as usize, (t as usize / 2) * SEG / 2);
                    let mut model = vec![0u8; SEG / 2];
                    for i in 0..3000 {
                        let off = rng.below(model.len() as u64 - 1) as usize;
                        let len = 1 + rng.below((model.len() - off).min(300_000) as u64) as usize;
                        if i % 2 == 0 {
                            let mut b = vec![0u8; len];
                            rng.fill(&mut b);
                            let zero = rng.below(8) == 0;
                            cache.write(&files[seg], seg * pps, base + off, (!zero).then_some(&b[..]), len).unwrap();
                            if zero {
                                b.fill(0);
                            }
                            model[off..off + len].copy_from_slice(&b);
                        } else {
                            let mut b = vec![0u8; len];
                            cache.read(&files[seg], seg * pps, base + off, &mut b).unwrap();
                            assert!(b == model[off..off + len], "thread {t}, op {i}: read {off}+{len}");
                        }
                    }
                    (seg, base, model)
                })
            })
            .collect();
        let models: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let c = &cache.counters;
        assert!(c.evictions.load(Ordering::Relaxed) > 10_000, "{c:?}");
        assert!(c.batches.load(Ordering::Relaxed) > 100, "{c:?}");
        assert!(c.hits.load(Ordering::Relaxed) > 0, "{c:?}");
        assert!(cache.resident.load(Ordering::Relaxed) <= MIN_FRAMES);
        for (seg, base, model) in models {
            let on_disk = std::fs::read(d.path().join(format!("{seg}.seg"))).unwrap();
            assert!(on_disk[base..base + model.len()] == model[..], "segment {seg} at {base} on disk");
        }
    }

    /// A store of many TiB costs address space, not memory: the region and the page states
    /// of 16 TiB are mapped, and only what is touched is backed.
    #[test]
    fn a_huge_capacity_is_only_address_space() {
        let segments = (16u64 << 40) / (64 << 20);
        let cache = Cache::new(0, segments, 64 << 20).unwrap();
        assert_eq!(cache.state.len() as u64, (16u64 << 40) / PAGE as u64);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        let last = (segments as usize - 1) * cache.pages_per_segment;
        let mut b = vec![0u8; 4096];
        cache.read(&direct(&p), last, 4096, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 7));
    }

    /// Forgotten pages are read again from the file; an evicted page's memory is given back.
    #[test]
    fn forget_drops_the_cached_pages() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, vec![1u8; 1 << 20]).unwrap();
        let f = direct(&p);
        let cache = Cache::new(0, 1, 1 << 20).unwrap();
        let mut b = vec![0u8; 8192];
        cache.read(&f, 0, 0, &mut b).unwrap();
        assert_eq!(cache.per_segment[0].load(Ordering::Relaxed), 2);
        OpenOptions::new().write(true).open(&p).unwrap().write_all_at(&[9u8; 8192], 0).unwrap();
        cache.read(&f, 0, 0, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 1), "a hit is served from the region");
        cache.forget(0, 2);
        assert_eq!(cache.per_segment[0].load(Ordering::Relaxed), 0);
        assert_eq!(cache.state[0].load(Ordering::Relaxed), EVICTED);
        cache.read(&f, 0, 0, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 9));
    }
}
