//! The mappings' faults as I/O errors. A page of a mapped store file that the kernel cannot
//! read in (a media error, a file shrunk from outside) raises `SIGBUS` in the thread that
//! touched it, and by default that kills the daemon. Every load and store of the daemon into a
//! store mapping runs inside [`access`], which names the mapped range it touches; the
//! process-wide `SIGBUS` handler installed here recognises a fault inside that range of the
//! faulting thread, maps a private zero page over the bad page (so the faulting instruction
//! retries and finishes harmlessly: no unwinding through Rust frames) and records the fault
//! for that thread. When the access is over, [`access`] reports it as `EIO`. Every other
//! `SIGBUS` goes to the handler that was there before (Rust's own, for stack overflows), or
//! to the default action.
//!
//! The zero page stays in the mapping: the caller must treat the page as failed from then on
//! (the store fails as on any I/O error; `mmap.rs` answers reads of the page with `EIO`).

use std::cell::Cell;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{Ordering, compiler_fence};

/// Page size of the zero page mapped over a bad page.
const PAGE: usize = 4096;

thread_local! {
    /// The mapped range `[start, end)` this thread is accessing under guard; empty outside.
    static RANGE: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// The first address that faulted during this thread's current guarded access, or 0.
    static FAULT: Cell<usize> = const { Cell::new(0) };
}

/// The `SIGBUS` action before ours, to which every fault that is not ours goes.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A fault inside a guarded access: the address that could not be read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fault {
    pub addr: usize,
}

impl Fault {
    /// The page of the fault, as an offset from `base`.
    pub(crate) fn page_offset(&self, base: *const u8) -> usize {
        (self.addr - base as usize) & !(PAGE - 1)
    }

    /// The fault as an I/O error (a request meeting it answers `EIO`).
    pub(crate) fn into_io(self, what: &str) -> io::Error {
        io::Error::other(format!("{what}: a mapped page could not be read or written (SIGBUS at {:#x})", self.addr))
    }
}

/// Installs the handler (once per process). Called by [`access`]; cheap after the first call.
pub(crate) fn install() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: sigaction with a zeroed out-parameter reads the current action; the new
        // action is fully initialised (handler, SA_SIGINFO|SA_ONSTACK, empty mask) and the
        // handler only does what is async-signal-safe (thread-local cells, mmap, sigaction).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                log::warn!("cannot read the SIGBUS action: {}", io::Error::last_os_error());
                return;
            }
            let _ = PREVIOUS.set(old);
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = handler as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            if libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) != 0 {
                log::warn!("cannot install the SIGBUS handler: {}", io::Error::last_os_error());
            }
        }
    });
}

/// Runs `f`, which loads from or stores into the mapped bytes `[start, start + len)` and
/// nothing else mapped, under the guard: if a page there cannot be read in or written back,
/// `f` runs to its end on a zero page instead and the access fails with the [`Fault`].
pub(crate) fn access<R>(start: *const u8, len: usize, f: impl FnOnce() -> R) -> Result<R, Fault> {
    install();
    let outer = RANGE.replace((start as usize, start as usize + len));
    let outer_fault = FAULT.replace(0);
    // The accesses `f` makes must stay between setting and clearing the range.
    compiler_fence(Ordering::SeqCst);
    let r = f();
    compiler_fence(Ordering::SeqCst);
    let fault = FAULT.replace(outer_fault);
    RANGE.set(outer);
    if fault != 0 { Err(Fault { addr: fault }) } else { Ok(r) }
}

/// The `SIGBUS` handler: a fault inside this thread's guarded range gets a zero page and is
/// recorded; anything else goes on to the previous handler.
extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (lo, hi) = RANGE.try_with(Cell::get).unwrap_or((0, 0));
    if lo <= addr && addr < hi {
        let page = addr & !(PAGE - 1);
        // SAFETY: the page lies inside a mapping of ours that this thread is accessing;
        // replacing it with a private anonymous page (MAP_FIXED) is what makes the faulting
        // instruction succeed when it is restarted. mmap is async-signal-safe.
        let p = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            let _ = FAULT.try_with(|f| {
                if f.get() == 0 {
                    f.set(addr)
                }
            });
            return;
        }
    }
    chain(sig, info, ctx);
}

/// Hands a `SIGBUS` that is not ours to the previous handler, or to the default action.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if let Some(prev) = PREVIOUS.get() {
        let h = prev.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: an SA_SIGINFO handler has this signature (it was installed as one).
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, ctx);
            } else {
                // SAFETY: a plain handler takes the signal number.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
            return;
        }
    }
    // The default action: restored, it ends the process when the faulting instruction runs
    // again (or at once for a signal someone sent).
    // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask; raise is async-signal-safe.
    unsafe {
        let dfl: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
        if (*info).si_code <= 0 {
            libc::raise(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn a_fault_in_a_guarded_range_is_an_error_and_the_process_lives() {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("f"))
            .unwrap();
        f.set_len(4 * PAGE as u64).unwrap();
        // SAFETY: a shared mapping of a file we hold open, unmapped at the end of the test.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        } as *mut u8;
        assert_ne!(base as *mut libc::c_void, libc::MAP_FAILED);
        // SAFETY: inside the mapping; the file is 4 pages long.
        let read = |at: usize| access(base, 4 * PAGE, || unsafe { std::ptr::read_volatile(base.add(at)) });
        // SAFETY: as above.
        assert_eq!(access(base, 4 * PAGE, || unsafe { std::ptr::write_volatile(base.add(PAGE), 7) }), Ok(()));
        assert_eq!(read(PAGE), Ok(7));
        // Cut the file to one page: pages 1..4 of the mapping now lie past its end.
        f.set_len(PAGE as u64).unwrap();
        let fault = read(2 * PAGE + 5).unwrap_err();
        assert_eq!(fault.page_offset(base), 2 * PAGE);
        // SAFETY: as above.
        let fault = access(base, 4 * PAGE, || unsafe { std::ptr::write_volatile(base.add(3 * PAGE), 1) }).unwrap_err();
        assert_eq!(fault.page_offset(base), 3 * PAGE);
        assert_eq!(read(0), Ok(0), "pages inside the file still read");
        // SAFETY: unmapping what was mapped above.
        unsafe { libc::munmap(base.cast(), 4 * PAGE) };
    }
}
