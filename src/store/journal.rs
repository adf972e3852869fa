//! The metadata journal: files of checksummed records, one record per request.
//!
//! File `meta/journal-<first seq, 16 hex digits>`, format 3:
//! ```text
//! header  magic "MMAPFSJ3" | store uuid (16) | first seq (u64) | crc32 of the 32 bytes before (u32)
//! record  payload length (u32) | seq (u64) | durable seq (u64) | 8 zero bytes
//!         | crc32 of the 28 bytes before (u32) | payload (ops) | crc32 of header and payload (u32)
//!         | zeros up to a multiple of 32 bytes
//! ```
//! Records are written in place over zeros the file already holds (written and committed
//! ahead of the records, in chunks of up to [`ZERO_CHUNK`]), so the file's size and blocks do not change
//! when a record is added: its `fdatasync` writes the record's pages and flushes the device
//! cache once, with no metadata commit of the host (which costs two flushes on a device
//! without FUA). Every write before that flush — the segments' data, written back first by
//! `Store::fsync` — is covered by the same flush (see docs/design.md, "Device flushes per
//! fsync").
//!
//! Writing in place means a power cut can keep any subset of the 512-byte sectors written
//! since the last flush. [`frame`] tells such a tear from damage: a torn record has a sector
//! of its span that still reads zero, and no intact record after it says that it was durable
//! (each record carries the highest seq that was durable when it was written). A record is
//! written with one `pwrite(2)` before the request is answered, so it survives `kill -9` of
//! the daemon (it is in the page cache); `sync` makes it durable (`fdatasync`), sharing one
//! `fdatasync` among concurrent callers. A checkpoint rotates to a new file.
//!
//! Formats 1 and 2 (appended, `O_APPEND`) are still read; a mount never appends to them.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::codec::{Dec, Enc};
use super::error::LoadError;
use super::faults::{self, Point};
use super::files;
use super::meta::Op;

/// Magic of a journal file in format 3, the one written.
const MAGIC: &[u8; 8] = b"MMAPFSJ3";
/// Magics of the appended formats, still read.
const MAGIC_V2: &[u8; 8] = b"MMAPFSJ2";
const MAGIC_V1: &[u8; 8] = b"MMAPFSJ1";
const HEADER_LEN: usize = 36;
/// Format 3: where the first record starts (the header, rounded up to [`RECORD_ALIGN`]).
const FIRST_RECORD: usize = 64;
/// Formats 1 and 2: payload length (u32) | seq (u64) | crc32 of those 12 bytes (u32).
const RECORD_HEADER_V2: usize = 16;
/// Format 3: payload length (u32) | seq (u64) | durable seq (u64) | 8 zero bytes | crc32 (u32).
const RECORD_HEADER: usize = 32;
/// crc32 of the header and payload (u32), after the payload.
const RECORD_TRAILER: usize = 4;
/// Format 3 records start at multiples of this (from the file's start): a record header never
/// spans two sectors, so a torn write leaves it whole or as it was (zero).
const RECORD_ALIGN: usize = 32;
/// The smallest unit a device writes whole (a sector): what a power cut keeps or loses.
const SECTOR: usize = 512;
/// Larger records cannot come from one request; a length beyond this is corruption.
const MAX_RECORD: usize = 64 << 20;
/// Zeros a new file starts with, and the unit the file grows in.
const FIRST_CHUNK: u64 = 4096;
/// The most zeros written ahead of the records at a time: a file grows by its own size up to
/// this (so a small journal stays small, and a store on a nearly full host still opens). The
/// fdatasync after a growth commits the file's new size (two device flushes on a device
/// without FUA); every other one flushes once.
const ZERO_CHUNK: u64 = if cfg!(test) { 4096 } else { 1 << 20 };

struct Active {
    file: Arc<File>,
    path: PathBuf,
    /// Seq of the last record written.
    seq: u64,
    /// Where the next record goes: the end of the last one.
    bytes: u64,
    /// Bytes of the file, all written (zeros past `bytes`).
    zeroed: u64,
    /// Whether the file grew (or is new) since its last `fdatasync`: its size and blocks are
    /// then metadata only its own sync commits.
    grown: bool,
    /// Seq of the first record the active file holds (or will hold).
    first: u64,
}

/// The open journal.
pub struct Journal {
    dir: PathBuf,
    uuid: [u8; 16],
    active: Mutex<Active>,
    /// Highest seq known durable.
    synced: AtomicU64,
    sync_lock: Mutex<()>,
    /// Counters: records appended, syncs done.
    pub appends: AtomicU64,
    pub syncs: AtomicU64,
}

fn file_name(first_seq: u64) -> String {
    format!("journal-{first_seq:016x}")
}

/// Journal files in `dir`, oldest first, with their first seq.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for ent in std::fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_prefix("journal-")) else { continue };
        if let Ok(seq) = u64::from_str_radix(hex, 16) {
            v.push((seq, ent.path()));
        }
    }
    v.sort();
    Ok(v)
}

fn header(uuid: &[u8; 16], first_seq: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(uuid);
    h.extend_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Writes zeros over `from..to` of `file` (real writes, not a hole: blocks the host allocates
/// now are overwritten in place later, with no metadata to commit).
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Name a new journal file has until it is complete; never listed by [`list`].
const NEW_FILE: &str = "journal.new";

/// Creates a journal file with its header and a chunk of zeros under a temporary name that is
/// then renamed, so a crash at any moment leaves either no file or a whole header (an empty
/// `journal-*` file would make the store refuse to mount), and syncs it and the directory.
fn create_file(dir: &Path, uuid: &[u8; 16], first_seq: u64) -> io::Result<(File, PathBuf)> {
    let tmp = dir.join(NEW_FILE);
    let path = dir.join(file_name(first_seq));
    // A leftover from a crash during an earlier creation holds nothing that was acknowledged.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let f = files::create_new(&tmp, OpenOptions::new().read(true).write(true))?;
    f.write_all_at(&header(uuid, first_seq), 0)?;
    write_zeros(&f, HEADER_LEN as u64, FIRST_CHUNK)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok((f, path))
}

/// `sync_file_range(2)` over the whole of `file`.
fn sync_file_range(file: &File, how: libc::c_uint) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a plain syscall on an fd we own; no memory is passed.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, how) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Rounds `n` up to a multiple of `to`.
fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

impl Journal {
    /// Opens the journal for writing after replay ended at `last_seq`: removes what replay
    /// found of a torn tail (zeros over it, or the file whose creation a crash cut short), then
    /// makes every record durable (a crash may have left them in the page cache only) and
    /// continues the newest file after its last record, or starts one (also when the newest is
    /// of format 1 or 2, which are never written to).
    pub fn open(dir: &Path, uuid: [u8; 16], last_seq: u64, torn: Option<&TornTail>) -> io::Result<Journal> {
        if let Some(t) = torn {
            if t.at == 0 {
                // A file whose creation a crash cut short (see `replay_files`): removed.
                std::fs::remove_file(&t.path)?;
                File::open(dir)?.sync_all()?;
            } else {
                let f = files::open(&t.path, OpenOptions::new().read(true).write(true))?;
                let mut magic = [0u8; 8];
                f.read_exact_at(&mut magic, 0)?;
                if &magic == MAGIC {
                    // What a tear kept of later records must not be read as records again.
                    write_zeros(&f, t.at, f.metadata()?.len())?;
                    f.sync_data()?;
                } else {
                    f.set_len(t.at)?;
                    f.sync_all()?;
                }
            }
        }
        let newest = match list(dir)?.pop() {
            Some((first, p)) => {
                let f = files::open(&p, OpenOptions::new().read(true).write(true))?;
                let mut magic = [0u8; 8];
                f.read_exact_at(&mut magic, 0)?;
                f.sync_data()?;
                match &magic == MAGIC {
                    true => {
                        let data = files::read(&p)?;
                        let end = match torn {
                            Some(t) if t.path == p => t.at,
                            _ => records_end(&data),
                        };
                        Some((f, p, first, end, data.len() as u64))
                    }
                    false => None,
                }
            }
            None => None,
        };
        let (file, path, first, bytes, zeroed) = match newest {
            Some(newest) => newest,
            None => {
                let (f, p) = create_file(dir, &uuid, last_seq + 1)?;
                (f, p, last_seq + 1, FIRST_RECORD as u64, FIRST_CHUNK)
            }
        };
        Ok(Journal {
            dir: dir.to_path_buf(),
            uuid,
            active: Mutex::new(Active {
                file: Arc::new(file),
                path,
                seq: last_seq,
                bytes,
                zeroed,
                grown: false,
                first,
            }),
            synced: AtomicU64::new(last_seq),
            sync_lock: Mutex::new(()),
            appends: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        })
    }

    /// Writes one record holding `ops`; returns its seq. The record is in the page cache
    /// (safe from a daemon crash) when this returns.
    pub fn append(&self, ops: &[Op]) -> io::Result<u64> {
        let mut e = Enc { buf: Vec::with_capacity(128) };
        e.buf.resize(RECORD_HEADER, 0);
        for op in ops {
            op.encode(&mut e);
        }
        let payload_len = e.buf.len() - RECORD_HEADER;
        if payload_len > MAX_RECORD {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "journal record too large"));
        }
        let body = e.buf.len();
        let mut rec = e.buf;
        rec.resize(round_up((body + RECORD_TRAILER) as u64, RECORD_ALIGN as u64) as usize, 0);
        rec[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        let durable = self.synced.load(Ordering::Acquire);
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let seq = a.seq + 1;
        rec[4..12].copy_from_slice(&seq.to_le_bytes());
        rec[12..20].copy_from_slice(&durable.to_le_bytes());
        let hcrc = crc32fast::hash(&rec[..28]);
        rec[28..32].copy_from_slice(&hcrc.to_le_bytes());
        let crc = crc32fast::hash(&rec[..body]);
        rec[body..body + RECORD_TRAILER].copy_from_slice(&crc.to_le_bytes());
        faults::check(Point::JournalWrite)?;
        let end = a.bytes + rec.len() as u64;
        if end > a.zeroed {
            // The next sync commits the larger size (the one sync in a chunk that pays for it).
            let to = round_up(end.max(a.zeroed + a.zeroed.min(ZERO_CHUNK)), FIRST_CHUNK);
            write_zeros(&a.file, a.zeroed, to)?;
            a.zeroed = to;
            a.grown = true;
        }
        a.file.write_all_at(&rec, a.bytes)?;
        a.seq = seq;
        a.bytes = end;
        self.appends.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Seq of the last record appended.
    pub fn last_seq(&self) -> u64 {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).seq
    }

    /// Bytes of records (and the header) in the active journal file.
    pub fn bytes(&self) -> u64 {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// Makes every record appended so far durable; one `fdatasync` serves all waiters.
    pub fn sync(&self) -> io::Result<()> {
        let target = self.last_seq();
        if self.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let _g = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        self.sync_active()
    }

    /// Like [`sync`](Self::sync), but always ends in an `fdatasync` of the journal file, even
    /// when every record is durable already: `Store::fsync` relies on its device cache flush
    /// (ext4 and XFS flush on every fdatasync) to make data written before it durable.
    pub fn sync_forced(&self) -> io::Result<()> {
        let _g = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_active()
    }

    /// `fdatasync` of the active file, covering everything appended up to now (older files
    /// were synced when they were rotated out). Called with `sync_lock` held.
    fn sync_active(&self) -> io::Result<()> {
        let (upto, file) = {
            let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
            // Cleared before the sync: a growth after this point is the next sync's.
            a.grown = false;
            (a.seq, a.file.clone())
        };
        faults::check(Point::JournalSync)?;
        if let Err(e) = file.sync_data() {
            self.active.lock().unwrap_or_else(|p| p.into_inner()).grown = true;
            return Err(e);
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// For an fsync whose data sync flushes the device cache anyway (a segment on the same
    /// filesystem, whose new blocks need a metadata commit): writes every record to the device
    /// and waits, without a flush of its own, and returns the seq they reach — durable once
    /// that flush is done, which the caller reports with [`covered`](Self::covered). `None`
    /// when the file grew since its last sync: its size is metadata only its own sync
    /// commits, so the caller must [`sync`](Self::sync).
    pub fn write_out(&self) -> io::Result<Option<u64>> {
        let _g = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (upto, file) = {
            let a = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if a.grown {
                return Ok(None);
            }
            (a.seq, a.file.clone())
        };
        faults::check(Point::JournalSync)?;
        let how = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        sync_file_range(&file, how)?;
        Ok(Some(upto))
    }

    /// Starts writing the records to the device, without waiting: an fsync does this while
    /// its data is written back, so that the two writes overlap and the journal's `fdatasync`
    /// finds its pages (mostly) written already.
    pub fn start_writeback(&self) -> io::Result<()> {
        let file = self.active.lock().unwrap_or_else(|p| p.into_inner()).file.clone();
        sync_file_range(&file, libc::SYNC_FILE_RANGE_WRITE)
    }

    /// Records that a device flush after [`write_out`](Self::write_out) made every record up
    /// to `upto` durable.
    pub fn covered(&self, upto: u64) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.synced.fetch_max(upto, Ordering::AcqRel);
    }

    /// Starts a new journal file after the current last record; returns the last seq of the
    /// old files. The old file is made durable first, so a journal file is only ever followed
    /// by another once every record in it is durable: only the newest file can end in a torn
    /// write. Appenders wait meanwhile (a few flushes once per `journal_limit` of records).
    pub fn rotate(&self) -> io::Result<u64> {
        let _syncs = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if a.first == a.seq + 1 {
            // Nothing appended since the last rotation: keep the (empty) active file.
            return Ok(a.seq);
        }
        // Until a checkpoint covers them, the old file is what holds these records.
        a.file.sync_data()?;
        self.synced.fetch_max(a.seq, Ordering::AcqRel);
        let (f, path) = create_file(&self.dir, &self.uuid, a.seq + 1)?;
        a.file = Arc::new(f);
        a.path = path;
        a.first = a.seq + 1;
        a.bytes = FIRST_RECORD as u64;
        a.zeroed = FIRST_CHUNK;
        a.grown = false;
        Ok(a.seq)
    }

    /// Deletes journal files whose records all have seq ≤ `upto` (they are in the checkpoint).
    pub fn remove_upto(&self, upto: u64) -> io::Result<()> {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner()).path.clone();
        for (first, path) in list(&self.dir)? {
            if path != active && first <= upto {
                std::fs::remove_file(&path)?;
            }
        }
        File::open(&self.dir)?.sync_all()
    }
}

/// Where replay found the end of the acknowledged records: the newest file ends in bytes of a
/// write that never completed, removed (by [`Journal::open`]) before writing again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    /// Offset of the first byte that is not part of a whole record.
    pub at: u64,
}

/// What [`replay`] read.
#[derive(Debug)]
pub struct Replayed {
    /// Seq of the last record (the checkpoint's seq if none followed it).
    pub last: u64,
    /// Records read whose seq followed the checkpoint.
    pub records: u64,
    pub torn: Option<TornTail>,
}

/// One record of a journal file, as [`frame`] finds it.
enum Frame<'a> {
    Record {
        seq: u64,
        /// Format 3: the highest seq that was durable when the record was written.
        durable: u64,
        payload: &'a [u8],
        len: usize,
    },
    /// Format 3: the rest of the file is zeros (the end of a file's records).
    End,
    /// What a write cut short by a crash can leave from here on (see [`frame`]).
    Torn,
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Reads the record at byte `pos` of a journal file's bytes `data`.
///
/// Format 3 (written in place over zeros): a power cut keeps any subset of the sectors written
/// since the last flush, each whole or as it was. So a record that fails its checksums is
/// maybe torn when the file ends inside it (a size never committed), when its header reads
/// zero, or when one sector's part of it reads zero; anything else — a header that is neither
/// zero nor intact, a checksum mismatch over sectors that were all written, an impossible
/// length, non-zero padding — is damage. Whether a maybe-torn record is torn is for the caller
/// to decide (no intact record after it may say it was durable, see `replay_files`).
///
/// Formats 1 and 2 (appended with one `write(2)`, which a daemon crash cannot tear and a power
/// cut leaves either cut short by the file's end or with its unwritten part reading zero): the
/// tail is torn when the file ends inside the record, or when the checksum that failed (the
/// header's, or the payload's, which is the record's last 4 bytes) and everything after it are zero.
fn frame(data: &[u8], pos: usize, format: Framing) -> Result<Frame<'_>, String> {
    let rest = &data[pos..];
    let u32_at = |o: usize| u32::from_le_bytes(rest[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(rest[o..o + 8].try_into().expect("8 bytes"));
    match format {
        Framing::V3 => {}
        Framing::V1 => {
            if rest.len() < RECORD_HEADER_V2 {
                return Ok(Frame::Torn);
            }
            // payload length | crc32 of seq+payload | seq | payload. The length is unchecked, so
            // a record cut short is taken for a torn tail as format 1 always did (such a store
            // is read once and then written in format 3).
            let len = u32_at(0) as usize;
            if len > MAX_RECORD {
                return Err(format!("record claims {len} bytes"));
            }
            if rest.len() < RECORD_HEADER_V2 + len {
                return Ok(Frame::Torn);
            }
            if crc32fast::hash(&rest[8..RECORD_HEADER_V2 + len]) != u32_at(4) {
                return Err("checksum mismatch".into());
            }
            let payload = &rest[RECORD_HEADER_V2..RECORD_HEADER_V2 + len];
            return Ok(Frame::Record { seq: u64_at(8), durable: 0, payload, len: RECORD_HEADER_V2 + len });
        }
        Framing::V2 => {
            if rest.len() < RECORD_HEADER_V2 {
                return Ok(Frame::Torn);
            }
            let zero_from = |i: usize| all_zero(&rest[i..]);
            if crc32fast::hash(&rest[..12]) != u32_at(12) {
                return if zero_from(12) { Ok(Frame::Torn) } else { Err("record header checksum mismatch".into()) };
            }
            let len = u32_at(0) as usize;
            if len > MAX_RECORD {
                return Err(format!("record claims {len} bytes"));
            }
            let total = RECORD_HEADER_V2 + len + RECORD_TRAILER;
            if rest.len() < total {
                return Ok(Frame::Torn);
            }
            if crc32fast::hash(&rest[..RECORD_HEADER_V2 + len]) != u32_at(RECORD_HEADER_V2 + len) {
                return if zero_from(RECORD_HEADER_V2 + len) {
                    Ok(Frame::Torn)
                } else {
                    Err("record checksum mismatch".into())
                };
            }
            let payload = &rest[RECORD_HEADER_V2..RECORD_HEADER_V2 + len];
            return Ok(Frame::Record { seq: u64_at(4), durable: 0, payload, len: total });
        }
    }
    if rest.len() < RECORD_HEADER {
        return Ok(if all_zero(rest) { Frame::End } else { Frame::Torn });
    }
    if all_zero(&rest[..RECORD_HEADER]) {
        return Ok(if all_zero(rest) { Frame::End } else { Frame::Torn });
    }
    if crc32fast::hash(&rest[..28]) != u32_at(28) || !all_zero(&rest[20..28]) {
        return Err("record header checksum mismatch".into());
    }
    let len = u32_at(0) as usize;
    if len > MAX_RECORD {
        return Err(format!("record claims {len} bytes"));
    }
    let body = RECORD_HEADER + len;
    if rest.len() < body + RECORD_TRAILER {
        return Ok(Frame::Torn);
    }
    if crc32fast::hash(&rest[..body]) != u32_at(body) {
        let (from, to) = (pos, pos + body + RECORD_TRAILER);
        let lost = (from / SECTOR..to.div_ceil(SECTOR))
            .any(|s| all_zero(&data[(s * SECTOR).max(from)..((s + 1) * SECTOR).min(to)]));
        return if lost { Ok(Frame::Torn) } else { Err("record checksum mismatch".into()) };
    }
    let total = round_up((body + RECORD_TRAILER) as u64, RECORD_ALIGN as u64) as usize;
    if !all_zero(&rest[body + RECORD_TRAILER..total.min(rest.len())]) {
        return Err("record padding is not zero".into());
    }
    Ok(Frame::Record { seq: u64_at(4), durable: u64_at(12), payload: &rest[RECORD_HEADER..body], len: total })
}

/// Format 3: an intact record at or after byte `from` whose durable seq is `seq` or later,
/// as (its offset, its seq) — proof that record `seq` was durable, so not torn.
fn durable_claim(data: &[u8], from: usize, seq: u64) -> Option<(usize, u64)> {
    let mut at = round_up(from as u64, RECORD_ALIGN as u64) as usize;
    while at + RECORD_HEADER <= data.len() {
        // Most of a torn tail is zeros: skip them without a checksum.
        if !all_zero(&data[at..at + RECORD_HEADER])
            && let Ok(Frame::Record { seq: s, durable, .. }) = frame(data, at, Framing::V3)
            && durable >= seq
        {
            return Some((at, s));
        }
        at += RECORD_ALIGN;
    }
    None
}

/// Format 3: the offset after the last whole record of a file that replay read.
fn records_end(data: &[u8]) -> u64 {
    let mut pos = FIRST_RECORD;
    while pos < data.len() {
        match frame(data, pos, Framing::V3) {
            Ok(Frame::Record { len, .. }) => pos += len,
            _ => break,
        }
    }
    pos as u64
}

/// Record framing of a journal file, told by its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// Format 1: the length was not checksummed (a damaged length looked like a torn tail).
    V1,
    /// Format 2: appended, a checksummed header (length, seq) and a checksum of the whole record.
    V2,
    /// Format 3: written in place over zeros, aligned, with the durable seq in each record.
    V3,
}

/// Reads every journal file in `dir` and calls `f(seq, ops)` for each record with
/// seq > `after` (records up to `after` are in the checkpoint). Modifies nothing: a torn
/// tail (only possible at the end of the newest file, see [`frame`]) is reported for
/// [`Journal::open`] to cut off; any other damage is an error naming the file and offset.
pub fn replay(
    dir: &Path,
    uuid: &[u8; 16],
    after: u64,
    f: impl FnMut(u64, Vec<Op>) -> Result<(), String>,
) -> Result<Replayed, LoadError> {
    replay_files(&list(dir).map_err(|e| LoadError::io_at(dir, e))?, uuid, after, true, f)
}

/// Like [`replay`], for the records in (`after`, `upto`] of the files a rotation closed at
/// `upto` (see [`Journal::rotate`]): complete files, so a torn tail or a missing record is damage.
pub fn replay_upto(
    dir: &Path,
    uuid: &[u8; 16],
    after: u64,
    upto: u64,
    f: impl FnMut(u64, Vec<Op>) -> Result<(), String>,
) -> Result<Replayed, LoadError> {
    let files: Vec<_> =
        list(dir).map_err(|e| LoadError::io_at(dir, e))?.into_iter().filter(|(first, _)| *first <= upto).collect();
    let out = replay_files(&files, uuid, after, false, f)?;
    if out.last != upto {
        return Err(LoadError::Corrupt(format!("journal: records {}..={upto} are missing", out.last + 1)));
    }
    Ok(out)
}

fn replay_files(
    files: &[(u64, PathBuf)],
    uuid: &[u8; 16],
    after: u64,
    torn_ok: bool,
    mut f: impl FnMut(u64, Vec<Op>) -> Result<(), String>,
) -> Result<Replayed, LoadError> {
    let mut out = Replayed { last: after, records: 0, torn: None };
    for (i, (first, path)) in files.iter().enumerate() {
        let newest = torn_ok && i + 1 == files.len();
        let data =
            faults::check(Point::MetaRead).and_then(|()| files::read(path)).map_err(|e| LoadError::io_at(path, e))?;
        let name = path.display();
        if newest && (data.len() < HEADER_LEN || data[..HEADER_LEN].iter().all(|&b| b == 0)) {
            // Format 2 named a new file before its header was flushed (a format-3 file is
            // synced before it is named, but a directory entry may still outlive a lost file
            // on some hosts); a power cut in between leaves it short or zeroed. No record in it
            // was ever reported durable — an fsync waits for the rotation's flushes — so it is
            // dropped like a torn tail.
            log::warn!(
                "journal {name}: a file whose creation a crash cut short; it holds nothing acknowledged and is dropped"
            );
            out.torn = Some(TornTail { path: path.clone(), at: 0 });
            break;
        }
        let corrupt = |msg: String| LoadError::Corrupt(format!("journal {name}: {msg}"));
        let framing = match data.get(..8) {
            Some(m) if m == MAGIC => Framing::V3,
            Some(m) if m == MAGIC_V2 => Framing::V2,
            Some(m) if m == MAGIC_V1 => Framing::V1,
            _ => return Err(corrupt("not a journal file of this format".into())),
        };
        if data.len() < HEADER_LEN {
            return Err(corrupt("file header cut short".into()));
        }
        if crc32fast::hash(&data[..32]).to_le_bytes() != data[32..36] {
            return Err(corrupt("header checksum mismatch".into()));
        }
        if data[8..24] != uuid[..] {
            return Err(corrupt("belongs to another store (uuid mismatch)".into()));
        }
        let file_first = u64::from_le_bytes(data[24..32].try_into().expect("8 bytes"));
        if file_first != *first {
            return Err(corrupt("file name and header disagree".into()));
        }
        if file_first > out.last + 1 {
            return Err(corrupt(format!("records {}..{} are missing", out.last + 1, file_first)));
        }
        let mut pos = if framing == Framing::V3 { FIRST_RECORD } else { HEADER_LEN };
        // Seq of the last record read from this file.
        let mut prev = file_first - 1;
        while pos < data.len() {
            let frame = frame(&data, pos, framing).map_err(|m| corrupt(format!("byte {pos}: {m}")))?;
            let (seq, payload, len) = match frame {
                Frame::Record { seq, payload, len, .. } => (seq, payload, len),
                Frame::End => break,
                Frame::Torn => {
                    if !newest {
                        return Err(corrupt(format!(
                            "record at byte {pos} cut short, and a newer journal file follows"
                        )));
                    }
                    if framing == Framing::V3
                        && let Some((at, by)) = durable_claim(&data, pos + RECORD_ALIGN, prev + 1)
                    {
                        return Err(corrupt(format!(
                            "record {} at byte {pos} is damaged: record {by} at byte {at} says it was durable",
                            prev + 1
                        )));
                    }
                    log::warn!(
                        "journal {name}: the bytes from {pos} on are a write a crash cut short; it was never acknowledged and is dropped"
                    );
                    out.torn = Some(TornTail { path: path.clone(), at: pos as u64 });
                    break;
                }
            };
            let mut d = Dec { buf: payload };
            let mut ops = Vec::new();
            while !d.is_empty() {
                ops.push(Op::decode(&mut d).map_err(|_| corrupt(format!("record at byte {pos}: undecodable op")))?);
            }
            if seq > after {
                if seq != out.last + 1 {
                    return Err(corrupt(format!("record at byte {pos} has seq {seq}, expected {}", out.last + 1)));
                }
                f(seq, ops).map_err(|m| corrupt(format!("record {seq} at byte {pos}: {m}")))?;
                out.last = seq;
                out.records += 1;
            }
            prev = seq;
            pos += len;
        }
    }
    Ok(out)
}

/// The records of a format-3 journal file, as (seq, payload).
#[cfg(test)]
fn records_v3(data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut v = Vec::new();
    let mut pos = FIRST_RECORD;
    while let Ok(Frame::Record { seq, payload, len, .. }) = frame(data, pos, Framing::V3) {
        v.push((seq, payload.to_vec()));
        pos += len;
    }
    v
}

/// Rewrites a format-3 journal file in format 1 or 2 (for tests of reading old stores).
#[cfg(test)]
pub(crate) fn rewrite_as_old(path: &Path, version: u8) {
    let data = std::fs::read(path).unwrap();
    let mut out = if version == 1 { MAGIC_V1.to_vec() } else { MAGIC_V2.to_vec() };
    out.extend_from_slice(&data[8..32]);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    for (seq, payload) in records_v3(&data) {
        let len = (payload.len() as u32).to_le_bytes();
        if version == 1 {
            let mut body = seq.to_le_bytes().to_vec();
            body.extend_from_slice(&payload);
            out.extend_from_slice(&len);
            out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            out.extend_from_slice(&body);
        } else {
            let start = out.len();
            out.extend_from_slice(&len);
            out.extend_from_slice(&seq.to_le_bytes());
            let hcrc = crc32fast::hash(&out[start..]);
            out.extend_from_slice(&hcrc.to_le_bytes());
            out.extend_from_slice(&payload);
            let crc = crc32fast::hash(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
    }
    std::fs::write(path, out).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::store::meta::Ts;

    const UUID: [u8; 16] = [7; 16];

    fn ops(n: u64) -> Vec<Op> {
        vec![Op::Free { ino: n }, Op::SetSize { ino: n, size: n * 3, mtime: Ts::default(), ctime: Ts::default() }]
    }

    type Records = Vec<(u64, Vec<Op>)>;

    fn collect(dir: &Path, after: u64) -> Result<(Records, Option<TornTail>), LoadError> {
        let mut v = Vec::new();
        let r = replay(dir, &UUID, after, |s, o| {
            v.push((s, o));
            Ok(())
        })?;
        assert_eq!(r.records as usize, v.len());
        Ok((v, r.torn))
    }

    fn seqs(dir: &Path) -> Vec<u64> {
        collect(dir, 0).unwrap().0.iter().map(|r| r.0).collect()
    }

    #[test]
    fn append_replay_rotate() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path(), UUID, 0, None).unwrap();
        for n in 1..=3 {
            assert_eq!(j.append(&ops(n)).unwrap(), n);
        }
        j.sync().unwrap();
        assert_eq!(j.rotate().unwrap(), 3);
        assert_eq!(j.rotate().unwrap(), 3, "a rotation with nothing new is a no-op");
        j.append(&ops(4)).unwrap();
        let (all, torn) = collect(d.path(), 0).unwrap();
        assert_eq!(all.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(all[3].1, ops(4));
        assert!(torn.is_none());
        j.remove_upto(3).unwrap();
        assert_eq!(list(d.path()).unwrap().len(), 1);
        assert_eq!(collect(d.path(), 3).unwrap().0.len(), 1);
        // Reopen continues the sequence.
        drop(j);
        let j = Journal::open(d.path(), UUID, 4, None).unwrap();
        assert_eq!(j.append(&ops(5)).unwrap(), 5);
        assert_eq!(collect(d.path(), 3).unwrap().0.len(), 2);
    }

    #[test]
    fn crash_while_creating_a_file_leaves_the_journal_readable() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path(), UUID, 0, None).unwrap();
        j.append(&ops(1)).unwrap();
        drop(j);
        // What a kill -9 between creating and filling in a new journal file leaves behind.
        std::fs::write(d.path().join(NEW_FILE), b"MMAP").unwrap();
        assert_eq!(collect(d.path(), 0).unwrap().0.len(), 1);
        let j = Journal::open(d.path(), UUID, 1, None).unwrap();
        j.append(&ops(2)).unwrap();
        assert_eq!(j.rotate().unwrap(), 2);
        assert!(!d.path().join(NEW_FILE).exists());
        assert_eq!(list(d.path()).unwrap().len(), 2);
        assert_eq!(collect(d.path(), 0).unwrap().0.len(), 2);
    }

    /// A power cut after a rotation named its new file but before the header was flushed
    /// leaves the file short or zeroed: replay drops it, open removes it and appends on.
    #[test]
    fn a_rotated_file_without_its_header_is_dropped() {
        for image in [&[][..], &[0u8; HEADER_LEN][..], &[0u8; 4096][..]] {
            let d = tempfile::tempdir().unwrap();
            let j = Journal::open(d.path(), UUID, 0, None).unwrap();
            j.append(&ops(1)).unwrap();
            j.append(&ops(2)).unwrap();
            assert_eq!(j.rotate().unwrap(), 2);
            drop(j);
            let new = list(d.path()).unwrap()[1].1.clone();
            std::fs::write(&new, image).unwrap();
            let (got, torn) = collect(d.path(), 0).unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(torn, Some(TornTail { path: new.clone(), at: 0 }));
            let j = Journal::open(d.path(), UUID, 2, torn.as_ref()).unwrap();
            assert!(!new.exists());
            j.append(&ops(3)).unwrap();
            drop(j);
            assert_eq!(seqs(d.path()), vec![1, 2, 3]);
        }
    }

    /// Offsets of the records of a format-3 file: (start, end of its trailer, end with padding).
    fn spans(data: &[u8]) -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        let mut pos = FIRST_RECORD;
        while let Ok(Frame::Record { payload, len, .. }) = frame(data, pos, Framing::V3) {
            v.push((pos, pos + RECORD_HEADER + payload.len() + RECORD_TRAILER, pos + len));
            pos += len;
        }
        v
    }

    /// A journal of records 1, 2 and 3 (none synced) in one file; that file's path.
    fn journal_of_three(dir: &Path) -> PathBuf {
        let j = Journal::open(dir, UUID, 0, None).unwrap();
        for n in 1..=3 {
            j.append(&ops(n)).unwrap();
        }
        list(dir).unwrap()[0].1.clone()
    }

    #[test]
    fn torn_tail_is_reported_then_zeroed_by_open_corruption_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = journal_of_three(d.path());
        let full = std::fs::read(&path).unwrap();
        assert_eq!(full.len() as u64, FIRST_CHUNK, "records are written over zeros written ahead");
        let s = spans(&full);
        assert_eq!(s.len(), 3);
        // The file ends inside the last record (a size never committed): torn, nothing modified.
        std::fs::write(&path, &full[..s[2].1 - 5]).unwrap();
        let (v, torn) = collect(d.path(), 0).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(torn, Some(TornTail { path: path.clone(), at: s[2].0 as u64 }));
        assert_eq!(std::fs::read(&path).unwrap().len(), s[2].1 - 5, "replay modifies nothing");
        // The last record's header (its sector) lost while a later sector reached the disk.
        let mut lost = full.clone();
        lost[s[2].0..s[2].0 + RECORD_HEADER].fill(0);
        lost[3000] = 0x55;
        std::fs::write(&path, &lost).unwrap();
        let (v, torn) = collect(d.path(), 0).unwrap();
        assert_eq!(v.len(), 2);
        let torn = torn.expect("a torn tail");
        // Opening for writes zeros what the tear left, and a new record follows the second.
        let j = Journal::open(d.path(), UUID, 2, Some(&torn)).unwrap();
        assert_eq!(j.append(&ops(3)).unwrap(), 3);
        assert_eq!(j.append(&ops(4)).unwrap(), 4);
        drop(j);
        assert_eq!(seqs(d.path()), vec![1, 2, 3, 4]);
        assert!(all_zero(&std::fs::read(&path).unwrap()[spans(&std::fs::read(&path).unwrap())[3].2..]));
        std::fs::write(&path, &full).unwrap();
        // Flip one byte inside the first record: refused (all its sectors were written), file
        // untouched.
        let mut bad = full.clone();
        bad[s[0].0 + RECORD_HEADER + 3] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        match collect(d.path(), 0) {
            Err(LoadError::Corrupt(m)) => assert!(m.contains("checksum"), "{m}"),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), bad);
        // The same in the last record: its sectors were all written, so it is damage too.
        let mut bad = full.clone();
        bad[s[2].0 + RECORD_HEADER + 3] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(collect(d.path(), 0), Err(LoadError::Corrupt(_))));
        // A length pointing past the end of the file, in the last but one record, must not pass
        // for a torn tail that drops the last record (the header's checksum covers it).
        let mut bad = full.clone();
        bad[s[1].0] = 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(collect(d.path(), 0), Err(LoadError::Corrupt(_))));
        // Padding that is not zero was never written by a record.
        let mut bad = full.clone();
        assert!(s[0].2 > s[0].1, "the first record is padded");
        bad[s[0].2 - 1] = 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(collect(d.path(), 0), Err(LoadError::Corrupt(_))));
        // A journal of another store is refused.
        std::fs::write(&path, &full).unwrap();
        assert!(matches!(replay(d.path(), &[1; 16], 0, |_, _| Ok(())), Err(LoadError::Corrupt(_))));
    }

    /// A record that was durable cannot be torn: when a later intact record says so, a record
    /// that looks torn (a sector of it zero) is damage, even in the newest file.
    #[test]
    fn a_record_a_later_one_calls_durable_is_never_taken_for_torn() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path(), UUID, 0, None).unwrap();
        for n in 1..=3 {
            j.append(&ops(n)).unwrap();
        }
        j.sync().unwrap();
        j.append(&ops(4)).unwrap();
        drop(j);
        let path = list(d.path()).unwrap()[0].1.clone();
        let full = std::fs::read(&path).unwrap();
        let s = spans(&full);
        for (victim, refused) in [(2, true), (3, false)] {
            let mut m = full.clone();
            m[s[victim].0..s[victim].0 + RECORD_HEADER].fill(0);
            std::fs::write(&path, &m).unwrap();
            match collect(d.path(), 0) {
                Err(LoadError::Corrupt(msg)) if refused => assert!(msg.contains("says it was durable"), "{msg}"),
                Ok((v, Some(_))) if !refused => assert_eq!(v.len(), 3, "record 4 was never synced"),
                other => panic!("record {}: {other:?}", victim + 1),
            }
        }
    }

    /// A model of a power cut on a device with a volatile cache: of the sectors written since
    /// the last flush, any subset is kept (each whole or as it was), and the size the file grew
    /// to since then may be lost. Replay must always find every synced record, then a prefix of
    /// the rest; opening it for writes must leave a journal that continues in order.
    #[test]
    fn any_sectors_a_power_cut_keeps_replay_every_synced_record() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path(), UUID, 0, None).unwrap();
        let big = |n: u64| {
            let mut o = ops(n);
            // Records of several sectors, and over chunk boundaries (the file grows).
            o.push(Op::Unlink {
                parent: n,
                name: vec![b'y' + (n % 3) as u8; (n as usize * 97) % 1400],
                time: Ts::default(),
            });
            o
        };
        for n in 1..=20 {
            j.append(&big(n)).unwrap();
        }
        j.sync().unwrap();
        let path = list(d.path()).unwrap()[0].1.clone();
        let synced = std::fs::read(&path).unwrap();
        for n in 21..=60 {
            j.append(&big(n)).unwrap();
        }
        drop(j);
        let written = std::fs::read(&path).unwrap();
        assert!(written.len() > synced.len(), "the file grew past the synced size");
        let all = collect(d.path(), 0).unwrap().0;
        let sectors = written.len() / SECTOR;
        let changed: Vec<usize> = (0..sectors)
            .filter(|&s| synced.get(s * SECTOR..(s + 1) * SECTOR) != Some(&written[s * SECTOR..(s + 1) * SECTOR]))
            .collect();
        let mut rng = Rng::new(0x0070_756e_6368);
        let mut cases = 0;
        for case in 0..600 {
            // Single sectors lost, then random subsets kept.
            let keep: Vec<bool> = changed
                .iter()
                .enumerate()
                .map(|(i, _)| if case < changed.len() { i != case } else { rng.below(2) == 0 })
                .collect();
            let grew = case % 3 != 0;
            let mut image = if grew { written.clone() } else { written[..synced.len()].to_vec() };
            for (&s, &k) in changed.iter().zip(&keep) {
                if !k && s * SECTOR < image.len() {
                    let old = synced.get(s * SECTOR..(s + 1) * SECTOR).map_or(vec![0; SECTOR], <[u8]>::to_vec);
                    image[s * SECTOR..(s + 1) * SECTOR].copy_from_slice(&old);
                }
            }
            std::fs::write(&path, &image).unwrap();
            let (got, torn) = collect(d.path(), 0).unwrap_or_else(|e| panic!("case {case}: {e:?}"));
            assert!(got.len() >= 20, "case {case}: only {} records, 20 were synced", got.len());
            assert_eq!(&got[..], &all[..got.len()], "case {case}");
            if case % 50 == 0 {
                let j = Journal::open(d.path(), UUID, got.len() as u64, torn.as_ref()).unwrap();
                j.append(&ops(1000)).unwrap();
                drop(j);
                let after = collect(d.path(), 0).unwrap().0;
                assert_eq!(after.len(), got.len() + 1, "case {case}: a record after the tear");
                assert_eq!(after.last().unwrap().1, ops(1000));
            }
            cases += 1;
        }
        eprintln!("{cases} power cuts over {} changed sectors", changed.len());
    }

    #[test]
    fn format_1_journals_are_still_read() {
        let d = tempfile::tempdir().unwrap();
        // A format-1 file: header with the old magic, records len | crc(seq+payload) | seq | ops.
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC_V1);
        h.extend_from_slice(&UUID);
        h.extend_from_slice(&1u64.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        for n in 1..=2u64 {
            let mut e = Enc::default();
            for op in ops(n) {
                op.encode(&mut e);
            }
            let mut body = n.to_le_bytes().to_vec();
            body.extend_from_slice(&e.buf);
            h.extend_from_slice(&(e.buf.len() as u32).to_le_bytes());
            h.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            h.extend_from_slice(&body);
        }
        std::fs::write(d.path().join(file_name(1)), &h).unwrap();
        assert_eq!(seqs(d.path()), vec![1, 2]);
        // Opening starts a format-3 file after it; both are read.
        let j = Journal::open(d.path(), UUID, 2, None).unwrap();
        j.append(&ops(3)).unwrap();
        assert_eq!(list(d.path()).unwrap().len(), 2);
        assert_eq!(seqs(d.path()), vec![1, 2, 3]);
    }

    #[test]
    fn format_2_journals_are_still_read_and_never_written() {
        let d = tempfile::tempdir().unwrap();
        let path = journal_of_three(d.path());
        rewrite_as_old(&path, 2);
        let v2 = std::fs::read(&path).unwrap();
        assert_eq!(&v2[..8], MAGIC_V2);
        assert_eq!(seqs(d.path()), vec![1, 2, 3]);
        // A format-2 file cut inside its last record: torn, cut off by open, which starts a
        // format-3 file after it.
        std::fs::write(&path, &v2[..v2.len() - 3]).unwrap();
        let (v, torn) = collect(d.path(), 0).unwrap();
        assert_eq!(v.len(), 2);
        let j = Journal::open(d.path(), UUID, 2, torn.as_ref()).unwrap();
        j.append(&ops(3)).unwrap();
        drop(j);
        let files = list(d.path()).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(&std::fs::read(&files[1].1).unwrap()[..8], MAGIC);
        assert_eq!(seqs(d.path()), vec![1, 2, 3]);
    }

    /// A journal of two files and a few hundred records of varied sizes.
    fn sample(dir: &Path) -> Vec<(u64, Vec<Op>)> {
        let j = Journal::open(dir, UUID, 0, None).unwrap();
        for n in 1..=300u64 {
            let mut o = ops(n);
            if n % 7 == 0 {
                o.push(Op::Unlink { parent: n, name: vec![b'x'; (n % 40) as usize], time: Ts::default() });
            }
            j.append(&o).unwrap();
            if n == 120 {
                j.rotate().unwrap();
            }
        }
        drop(j);
        collect(dir, 0).unwrap().0
    }

    /// Replays after one mutation of `file` and checks the rule: refused with nothing
    /// modified, or every acknowledged record (`want` of them) back. Returns whether it mounted.
    fn check_case(dir: &Path, file: &Path, mutated: &[u8], all: &[(u64, Vec<Op>)], want: usize, what: &str) -> bool {
        std::fs::write(file, mutated).unwrap();
        match collect(dir, 0) {
            Ok((got, _)) => {
                assert_eq!(got.len(), want, "{what}: mounted with {} of {want} acknowledged records", got.len());
                assert_eq!(&got[..], &all[..want], "{what}: records differ");
                true
            }
            Err(LoadError::Corrupt(_)) => {
                assert_eq!(std::fs::read(file).unwrap(), mutated, "{what}: a refused journal was modified");
                false
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }

    /// Deterministic fuzzing of journal damage: every single-byte change, every length field
    /// set to other values, thousands of random multi-byte damages, and truncation at every
    /// offset. Damage is refused with nothing modified, or (never, in practice, for damage)
    /// the store mounts with every acknowledged record; a truncation is a crash image, so it
    /// mounts with exactly the records wholly before the cut (or is refused).
    #[test]
    fn fuzzed_damage_is_refused_or_loses_nothing() {
        let seed = 0x6d6d_6170_6673;
        eprintln!("seed {seed:#x}");
        let mut rng = Rng::new(seed);
        let d = tempfile::tempdir().unwrap();
        let all = sample(d.path());
        assert_eq!(all.len(), 300);
        let files: Vec<PathBuf> = list(d.path()).unwrap().into_iter().map(|f| f.1).collect();
        let (mut cases, mut mounted) = (0, 0);
        for (fi, file) in files.iter().enumerate() {
            let orig = std::fs::read(file).unwrap();
            // Record boundaries of this file, to aim at the length fields.
            let records = spans(&orig);
            let starts: Vec<usize> = records.iter().map(|r| r.0).collect();
            let records_end = records.last().unwrap().1;
            for i in 0..orig.len() {
                let mut m = orig.clone();
                m[i] ^= (rng.below(255) + 1) as u8;
                mounted +=
                    check_case(d.path(), file, &m, &all, all.len(), &format!("file {fi} byte {i} changed")) as usize;
                cases += 1;
            }
            for &s in &starts {
                let len = u32::from_le_bytes(orig[s..s + 4].try_into().unwrap());
                for v in
                    [0, len.wrapping_sub(1), len + 1, len + 4, u32::MAX, (orig.len() - s) as u32, rng.next_u64() as u32]
                {
                    if v == len {
                        continue;
                    }
                    let mut m = orig.clone();
                    m[s..s + 4].copy_from_slice(&v.to_le_bytes());
                    let what = format!("file {fi} record at {s}: length {len} -> {v}");
                    mounted += check_case(d.path(), file, &m, &all, all.len(), &what) as usize;
                    cases += 1;
                }
            }
            for k in 0..1500 {
                let mut m = orig.clone();
                let n = 2 + rng.below(15) as usize;
                let at = rng.below(m.len() as u64) as usize;
                // Bursts (a bad sector) and scattered bytes.
                for j in 0..n {
                    let i = if k % 2 == 0 { (at + j) % m.len() } else { rng.below(m.len() as u64) as usize };
                    m[i] ^= (rng.below(255) + 1) as u8;
                }
                mounted += check_case(d.path(), file, &m, &all, all.len(), &format!("file {fi} damage {k}")) as usize;
                cases += 1;
            }
            let before_file = if fi == 0 { 0 } else { 120 };
            for cut in 0..orig.len() {
                // Records of this file wholly before the cut (padding is not needed).
                let whole = records.iter().filter(|r| r.1 <= cut).count();
                let newest = fi + 1 == files.len();
                let what = format!("file {fi} cut at {cut}");
                let want = if cut >= records_end { all.len() } else { before_file + whole };
                let ok = check_case(d.path(), file, &orig[..cut], &all, want, &what);
                // The newest file may end in a torn write, or be cut inside its header (a
                // rotation's file before its flush: dropped whole); an older file may lose
                // only zeros after its records.
                assert_eq!(ok, newest || cut >= records_end, "{what}: only the newest file may be cut short");
                cases += 1;
            }
            std::fs::write(file, &orig).unwrap();
        }
        eprintln!("{cases} cases, {mounted} mounted with every acknowledged record, the rest refused");
        assert!(cases > 5000);
    }
}
