//! The metadata journal: append-only files of checksummed records, one record per request.
//!
//! File `meta/journal-<first seq, 16 hex digits>`:
//! ```text
//! header  magic "MMAPFSJ2" | store uuid (16) | first seq (u64) | crc32 of the 32 bytes before (u32)
//! record  payload length (u32) | seq (u64) | crc32 of the 12 bytes before (u32)
//!         | payload (ops) | crc32 of header and payload (u32)
//! ```
//! The header checksum means a damaged length is never taken for a torn append, and the
//! trailing checksum ends every record in bytes that are not all zero (see [`frame`] for
//! what a torn tail may look like).
//! A record is appended with one `write(2)` before the request is answered, so it survives
//! `kill -9` of the daemon (it is in the page cache); `sync` makes it durable (`fdatasync`),
//! sharing one `fdatasync` among concurrent callers. A checkpoint rotates to a new file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::codec::{Dec, Enc};
use super::error::LoadError;
use super::faults::{self, Point};
use super::files;
use super::meta::Op;

/// Magic of a journal file in format 2 (and of format 1, read for the upgrade).
const MAGIC: &[u8; 8] = b"MMAPFSJ2";
const MAGIC_V1: &[u8; 8] = b"MMAPFSJ1";
const HEADER_LEN: usize = 36;
/// payload length (u32) | seq (u64) | crc32 of those 12 bytes (u32)
const RECORD_HEADER: usize = 16;
/// crc32 of the header and payload (u32): the record's last bytes.
const RECORD_TRAILER: usize = 4;
/// Larger records cannot come from one request; a length beyond this is corruption.
const MAX_RECORD: usize = 64 << 20;

struct Active {
    file: Arc<File>,
    path: PathBuf,
    /// Seq of the last record appended.
    seq: u64,
    /// Bytes in the active file.
    bytes: u64,
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

/// Name a new journal file has until it is complete; never listed by [`list`].
const NEW_FILE: &str = "journal.new";

/// Creates a journal file with its header under a temporary name that is then renamed, so a
/// crash at any moment leaves either no file or a whole header (an empty `journal-*` file
/// would make the store refuse to mount). Not flushed: the caller syncs the file and the
/// directory before any record in it is reported durable.
fn create_file(dir: &Path, uuid: &[u8; 16], first_seq: u64) -> io::Result<(File, PathBuf)> {
    let tmp = dir.join(NEW_FILE);
    let path = dir.join(file_name(first_seq));
    // A leftover from a crash during an earlier creation holds nothing that was acknowledged.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = files::create_new(&tmp, OpenOptions::new().append(true))?;
    f.write_all(&header(uuid, first_seq))?;
    std::fs::rename(&tmp, &path)?;
    Ok((f, path))
}

impl Journal {
    /// Opens the journal for appending after replay ended at `last_seq`: cuts off a torn tail
    /// that replay found, then makes every record durable (a crash may have left them in the
    /// page cache only) and continues the newest file, or starts one (also when the newest is
    /// of format 1, which is never appended to).
    pub fn open(dir: &Path, uuid: [u8; 16], last_seq: u64, torn: Option<&TornTail>) -> io::Result<Journal> {
        if let Some(t) = torn {
            if t.at == 0 {
                // A file whose creation a crash cut short (see `replay_files`): removed.
                std::fs::remove_file(&t.path)?;
                File::open(dir)?.sync_all()?;
            } else {
                let f = files::open(&t.path, OpenOptions::new().write(true))?;
                f.set_len(t.at)?;
                f.sync_all()?;
            }
        }
        // The newest file: made durable (a crash may have left its records in the page cache
        // only), and continued if it is of format 2.
        let newest = match list(dir)?.pop() {
            Some((first, p)) => {
                let mut f = files::open(&p, OpenOptions::new().read(true).append(true))?;
                let mut magic = [0u8; 8];
                std::io::Read::read_exact(&mut f, &mut magic)?;
                f.sync_data()?;
                (&magic == MAGIC).then_some((f, p, first))
            }
            None => None,
        };
        let (file, path, first) = match newest {
            Some(newest) => newest,
            None => {
                let (f, p) = create_file(dir, &uuid, last_seq + 1)?;
                f.sync_all()?;
                File::open(dir)?.sync_all()?;
                (f, p, last_seq + 1)
            }
        };
        let bytes = file.metadata()?.len();
        Ok(Journal {
            dir: dir.to_path_buf(),
            uuid,
            active: Mutex::new(Active { file: Arc::new(file), path, seq: last_seq, bytes, first }),
            synced: AtomicU64::new(last_seq),
            sync_lock: Mutex::new(()),
            appends: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        })
    }

    /// Appends one record holding `ops`; returns its seq. The record is in the page cache
    /// (safe from a daemon crash) when this returns.
    pub fn append(&self, ops: &[Op]) -> io::Result<u64> {
        let mut e = Enc { buf: Vec::with_capacity(128) };
        e.buf.resize(RECORD_HEADER, 0);
        for op in ops {
            op.encode(&mut e);
        }
        e.buf.extend_from_slice(&[0; RECORD_TRAILER]);
        let mut rec = e.buf;
        let payload_len = rec.len() - RECORD_HEADER - RECORD_TRAILER;
        if payload_len > MAX_RECORD {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "journal record too large"));
        }
        rec[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let seq = a.seq + 1;
        rec[4..12].copy_from_slice(&seq.to_le_bytes());
        let hcrc = crc32fast::hash(&rec[..12]);
        rec[12..16].copy_from_slice(&hcrc.to_le_bytes());
        let body = rec.len() - RECORD_TRAILER;
        let crc = crc32fast::hash(&rec[..body]);
        rec[body..].copy_from_slice(&crc.to_le_bytes());
        faults::check(Point::JournalWrite)?;
        (&*a.file).write_all(&rec)?;
        a.seq = seq;
        a.bytes += rec.len() as u64;
        self.appends.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Seq of the last record appended.
    pub fn last_seq(&self) -> u64 {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).seq
    }

    /// Bytes in the active journal file.
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
            let a = self.active.lock().unwrap_or_else(|p| p.into_inner());
            (a.seq, a.file.clone())
        };
        faults::check(Point::JournalSync)?;
        file.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Starts a new journal file after the current last record; returns the last seq of the
    /// old files. Appenders wait only while the new file is created and named (no flush): the
    /// flushes follow with `sync_lock` held, so no fsync can report records of the new file
    /// durable before the old file and the new file's name are.
    pub fn rotate(&self) -> io::Result<u64> {
        let _syncs = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (old, old_seq, new) = {
            let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if a.first == a.seq + 1 {
                // Nothing appended since the last rotation: keep the (empty) active file.
                return Ok(a.seq);
            }
            let (f, path) = create_file(&self.dir, &self.uuid, a.seq + 1)?;
            let f = Arc::new(f);
            let old = std::mem::replace(&mut a.file, f.clone());
            a.path = path;
            a.first = a.seq + 1;
            a.bytes = HEADER_LEN as u64;
            (old, a.seq, f)
        };
        // Until a checkpoint covers them, the old file is what holds these records.
        old.sync_data()?;
        self.synced.fetch_max(old_seq, Ordering::AcqRel);
        new.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        Ok(old_seq)
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

/// Where replay found the end of the acknowledged records: the newest file ends in bytes of an
/// append that never completed, to be cut off (by [`Journal::open`]) before appending again.
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

/// One record of a journal file, as [`frames`] finds it.
enum Frame<'a> {
    Record {
        seq: u64,
        payload: &'a [u8],
        len: usize,
    },
    /// The rest of the file is what a write cut short by a crash leaves (see [`frames`]).
    Torn,
}

/// Reads the record at the start of `rest` (a journal file's bytes from one record on).
///
/// Only damage at the very end can be a torn append: an append is one `write(2)`, which a
/// daemon crash cannot tear (the bytes are in the page cache) and a power cut leaves either
/// cut short by the file's end or with its unwritten part reading zero. So the tail is torn
/// when the file ends inside the record, or when the checksum that failed (the header's, or
/// the payload's, which is the record's last 4 bytes) and everything after it are zero.
/// Anything else — a checksum mismatch with data after it, an impossible length — is damage.
fn frame(rest: &[u8], format: Framing) -> Result<Frame<'_>, String> {
    let zero_from = |i: usize| rest.get(i..).is_some_and(|r| r.iter().all(|&b| b == 0));
    let u32_at = |o: usize| u32::from_le_bytes(rest[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(rest[o..o + 8].try_into().expect("8 bytes"));
    if rest.len() < RECORD_HEADER {
        return Ok(Frame::Torn);
    }
    if format == Framing::V1 {
        // payload length | crc32 of seq+payload | seq | payload. The length is unchecked, so a
        // record cut short is taken for a torn tail as format 1 always did (such a store is
        // read once and then written in format 2).
        let len = u32_at(0) as usize;
        if len > MAX_RECORD {
            return Err(format!("record claims {len} bytes"));
        }
        if rest.len() < RECORD_HEADER + len {
            return Ok(Frame::Torn);
        }
        if crc32fast::hash(&rest[8..RECORD_HEADER + len]) != u32_at(4) {
            return Err("checksum mismatch".into());
        }
        return Ok(Frame::Record {
            seq: u64_at(8),
            payload: &rest[RECORD_HEADER..RECORD_HEADER + len],
            len: RECORD_HEADER + len,
        });
    }
    if crc32fast::hash(&rest[..12]) != u32_at(12) {
        return if zero_from(12) { Ok(Frame::Torn) } else { Err("record header checksum mismatch".into()) };
    }
    let len = u32_at(0) as usize;
    if len > MAX_RECORD {
        return Err(format!("record claims {len} bytes"));
    }
    let total = RECORD_HEADER + len + RECORD_TRAILER;
    if rest.len() < total {
        return Ok(Frame::Torn);
    }
    if crc32fast::hash(&rest[..RECORD_HEADER + len]) != u32_at(RECORD_HEADER + len) {
        return if zero_from(RECORD_HEADER + len) { Ok(Frame::Torn) } else { Err("record checksum mismatch".into()) };
    }
    Ok(Frame::Record { seq: u64_at(4), payload: &rest[RECORD_HEADER..RECORD_HEADER + len], len: total })
}

/// Record framing of a journal file, told by its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// Format 1: the length was not checksummed (a damaged length looked like a torn tail).
    V1,
    /// Format 2: a checksummed header (length, seq) and a checksum of the whole record.
    V2,
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
            // A rotation names the new file before its header is flushed (appenders must not
            // wait for flushes, see `Journal::rotate`); a power cut in between leaves it short
            // or zeroed. No record in it was ever reported durable — an fsync waits for the
            // rotation's flushes — so it is dropped like a torn tail.
            log::warn!(
                "journal {name}: a file whose creation a crash cut short; it holds nothing acknowledged and is dropped"
            );
            out.torn = Some(TornTail { path: path.clone(), at: 0 });
            break;
        }
        let corrupt = |msg: String| LoadError::Corrupt(format!("journal {name}: {msg}"));
        let framing = match data.get(..8) {
            Some(m) if m == MAGIC => Framing::V2,
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
        let mut pos = HEADER_LEN;
        while pos < data.len() {
            let frame = frame(&data[pos..], framing).map_err(|m| corrupt(format!("byte {pos}: {m}")))?;
            let Frame::Record { seq, payload, len } = frame else {
                if !newest {
                    return Err(corrupt(format!("record at byte {pos} cut short, and a newer journal file follows")));
                }
                log::warn!(
                    "journal {name}: the bytes from {pos} on are an append a crash cut short; it was never acknowledged and is dropped"
                );
                out.torn = Some(TornTail { path: path.clone(), at: pos as u64 });
                break;
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
            pos += len;
        }
    }
    Ok(out)
}

/// Rewrites a format-2 journal file in format 1 (for tests of the upgrade).
#[cfg(test)]
pub(crate) fn rewrite_as_v1(path: &Path) {
    let data = std::fs::read(path).unwrap();
    let mut out = MAGIC_V1.to_vec();
    out.extend_from_slice(&data[8..32]);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let mut pos = HEADER_LEN;
    while pos < data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        let mut body = data[pos + 4..pos + 12].to_vec();
        body.extend_from_slice(&data[pos + RECORD_HEADER..pos + RECORD_HEADER + len]);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        pos += RECORD_HEADER + len + RECORD_TRAILER;
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

    #[test]
    fn torn_tail_is_reported_then_cut_by_open_corruption_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path(), UUID, 0, None).unwrap();
        for n in 1..=3 {
            j.append(&ops(n)).unwrap();
        }
        drop(j);
        let path = list(d.path()).unwrap()[0].1.clone();
        let full = std::fs::read(&path).unwrap();
        // Cut the last record short: replay keeps 2 records, reports the tail, changes nothing.
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        let (v, torn) = collect(d.path(), 0).unwrap();
        assert_eq!(v.len(), 2);
        let torn = torn.expect("a torn tail");
        assert_eq!(std::fs::read(&path).unwrap().len(), full.len() - 5, "replay modifies nothing");
        // Opening for appends cuts it off, and a new record follows the second.
        let j = Journal::open(d.path(), UUID, 2, Some(&torn)).unwrap();
        assert_eq!(j.append(&ops(3)).unwrap(), 3);
        drop(j);
        assert_eq!(seqs(d.path()), vec![1, 2, 3]);
        // The unwritten part of an append reads zero after some power cuts: also torn.
        let now = std::fs::read(&path).unwrap();
        let mut zeroed = now.clone();
        let last = zeroed.len() - 10;
        zeroed[last..].fill(0);
        std::fs::write(&path, &zeroed).unwrap();
        assert_eq!(collect(d.path(), 0).unwrap().0.len(), 2);
        zeroed.extend_from_slice(&[0; 100]);
        std::fs::write(&path, &zeroed).unwrap();
        assert_eq!(collect(d.path(), 0).unwrap().0.len(), 2);
        // Flip one byte inside the first record: refused, file untouched.
        let mut bad = now.clone();
        bad[HEADER_LEN + RECORD_HEADER + 3] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        match collect(d.path(), 0) {
            Err(LoadError::Corrupt(m)) => assert!(m.contains("checksum"), "{m}"),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), bad);
        // The defect format 1 had: a length pointing past the end of the file, in the last
        // but one record, must not pass for a torn tail that drops the last record.
        let mut bad = now.clone();
        bad[HEADER_LEN] = 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(collect(d.path(), 0), Err(LoadError::Corrupt(_))));
        // A journal of another store is refused.
        std::fs::write(&path, &now).unwrap();
        assert!(matches!(replay(d.path(), &[1; 16], 0, |_, _| Ok(())), Err(LoadError::Corrupt(_))));
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
        // Opening starts a format-2 file after it; both are read.
        let j = Journal::open(d.path(), UUID, 2, None).unwrap();
        j.append(&ops(3)).unwrap();
        assert_eq!(list(d.path()).unwrap().len(), 2);
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
            let mut starts = Vec::new();
            let mut pos = HEADER_LEN;
            while pos < orig.len() {
                starts.push(pos);
                let len = u32::from_le_bytes(orig[pos..pos + 4].try_into().unwrap()) as usize;
                pos += RECORD_HEADER + len + RECORD_TRAILER;
            }
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
                // Records of this file wholly before the cut.
                let whole =
                    starts.iter().zip(starts.iter().skip(1).chain([&orig.len()])).filter(|(_, e)| **e <= cut).count();
                let newest = fi + 1 == files.len();
                let what = format!("file {fi} cut at {cut}");
                let ok = check_case(d.path(), file, &orig[..cut], &all, before_file + whole, &what);
                // The newest file may end in a torn append, or be cut inside its header (a
                // rotation's file before its flush: dropped whole); an older file may not.
                assert_eq!(ok, newest, "{what}: only the newest file may be cut short");
                cases += 1;
            }
            std::fs::write(file, &orig).unwrap();
        }
        eprintln!("{cases} cases, {mounted} mounted with every acknowledged record, the rest refused");
        assert!(cases > 5000);
    }
}
