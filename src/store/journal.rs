//! The metadata journal: append-only files of checksummed records, one record per request.
//!
//! File `meta/journal-<first seq, 16 hex digits>`:
//! ```text
//! header  magic "MMAPFSJ1" | store uuid (16) | first seq (u64) | crc32 of the 32 bytes before (u32)
//! record  payload length (u32) | crc32 of seq+payload (u32) | seq (u64) | payload (ops)
//! ```
//! A record is appended with one `write(2)` before the request is answered, so it survives
//! `kill -9` of the daemon (it is in the page cache); `sync` makes it durable (`fdatasync`),
//! sharing one `fdatasync` among concurrent callers. A checkpoint rotates to a new file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::codec::{Dec, Enc};
use super::meta::Op;

const MAGIC: &[u8; 8] = b"MMAPFSJ1";
const HEADER_LEN: usize = 36;
const RECORD_HEADER: usize = 16;
/// Larger records cannot come from one request; a length beyond this is corruption.
const MAX_RECORD: usize = 64 << 20;

/// Why the journal could not be read.
#[derive(Debug)]
pub enum ReplayError {
    Io(io::Error),
    /// The journal is damaged; the message says where.
    Corrupt(String),
}

impl From<io::Error> for ReplayError {
    fn from(e: io::Error) -> Self {
        ReplayError::Io(e)
    }
}

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

/// Name a new journal file has until its header is durable; never listed by [`list`].
const NEW_FILE: &str = "journal.new";

/// Creates a journal file atomically: the header is written and synced under a temporary name
/// that is then renamed, so a crash at any moment leaves either no file or a whole header
/// (an empty `journal-*` file would make the store refuse to mount).
fn create_file(dir: &Path, uuid: &[u8; 16], first_seq: u64) -> io::Result<(File, PathBuf)> {
    let tmp = dir.join(NEW_FILE);
    let path = dir.join(file_name(first_seq));
    // A leftover from a crash during an earlier creation holds nothing that was acknowledged.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = OpenOptions::new().create_new(true).append(true).open(&tmp)?;
    f.write_all(&header(uuid, first_seq))?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok((f, path))
}

impl Journal {
    /// Opens the journal for appending after replay ended at `last_seq`: continues the newest
    /// file, or starts one.
    pub fn open(dir: &Path, uuid: [u8; 16], last_seq: u64) -> io::Result<Journal> {
        let files = list(dir)?;
        let (file, path, first) = match files.last() {
            Some((first, p)) => (OpenOptions::new().append(true).open(p)?, p.clone(), *first),
            None => {
                let (f, p) = create_file(dir, &uuid, last_seq + 1)?;
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
        let mut rec = e.buf;
        let payload_len = (rec.len() - RECORD_HEADER) as u32;
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let seq = a.seq + 1;
        rec[8..16].copy_from_slice(&seq.to_le_bytes());
        let crc = crc32fast::hash(&rec[8..]);
        rec[0..4].copy_from_slice(&payload_len.to_le_bytes());
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
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
        file.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Starts a new journal file after the current last record (called with all appenders
    /// stopped, right before a checkpoint is taken); returns the last seq of the old files.
    pub fn rotate(&self) -> io::Result<u64> {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if a.first == a.seq + 1 {
            // Nothing appended since the last rotation: keep the (empty) active file.
            return Ok(a.seq);
        }
        // Until the checkpoint is durable, the old file is what holds these records.
        a.file.sync_data()?;
        self.synced.fetch_max(a.seq, Ordering::AcqRel);
        let (f, path) = create_file(&self.dir, &self.uuid, a.seq + 1)?;
        a.file = Arc::new(f);
        a.path = path;
        a.first = a.seq + 1;
        a.bytes = HEADER_LEN as u64;
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

/// Reads every journal file in `dir` and calls `f(seq, ops)` for each record with
/// seq > `after` (records up to `after` are in the checkpoint). A record cut short at the very
/// end of the newest file (a crash in the middle of an append that was never acknowledged) is
/// cut off; any other damage is an error. Returns the last seq seen.
pub fn replay(
    dir: &Path,
    uuid: &[u8; 16],
    after: u64,
    mut f: impl FnMut(u64, Vec<Op>) -> Result<(), String>,
) -> Result<u64, ReplayError> {
    let files = list(dir)?;
    let mut last = after;
    for (i, (first, path)) in files.iter().enumerate() {
        let newest = i + 1 == files.len();
        let data = std::fs::read(path)?;
        let name = path.display();
        let corrupt = |msg: String| ReplayError::Corrupt(format!("journal {name}: {msg}"));
        if data.len() < HEADER_LEN || data[..8] != MAGIC[..] {
            return Err(corrupt("not a journal file of this format".into()));
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
        if file_first > last + 1 {
            return Err(corrupt(format!("records {}..{} are missing", last + 1, file_first)));
        }
        let mut pos = HEADER_LEN;
        while pos < data.len() {
            let rest = &data[pos..];
            let torn = |what: &str| -> Result<(), ReplayError> {
                if newest {
                    log::warn!(
                        "journal {name}: dropping a record cut short at byte {pos} ({what}); it was never acknowledged"
                    );
                    Ok(())
                } else {
                    Err(corrupt(format!("record at byte {pos} cut short ({what})")))
                }
            };
            if rest.len() < RECORD_HEADER {
                torn("header")?;
                truncate(path, pos)?;
                break;
            }
            let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            if len > MAX_RECORD {
                return Err(corrupt(format!("record at byte {pos} claims {len} bytes")));
            }
            if rest.len() < RECORD_HEADER + len {
                torn("payload")?;
                truncate(path, pos)?;
                break;
            }
            let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
            let body = &rest[8..RECORD_HEADER + len];
            if crc32fast::hash(body) != crc {
                return Err(corrupt(format!("record at byte {pos}: checksum mismatch")));
            }
            let seq = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
            let mut d = Dec { buf: &body[8..] };
            let mut ops = Vec::new();
            while !d.is_empty() {
                ops.push(Op::decode(&mut d).map_err(|_| corrupt(format!("record at byte {pos}: undecodable op")))?);
            }
            if seq > after {
                if seq != last + 1 {
                    return Err(corrupt(format!("record at byte {pos} has seq {seq}, expected {}", last + 1)));
                }
                f(seq, ops).map_err(|m| corrupt(format!("record {seq} at byte {pos}: {m}")))?;
                last = seq;
            }
            pos += RECORD_HEADER + len;
        }
    }
    Ok(last)
}

fn truncate(path: &Path, len: usize) -> io::Result<()> {
    OpenOptions::new().write(true).open(path)?.set_len(len as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::meta::Ts;

    const UUID: [u8; 16] = [7; 16];

    fn ops(n: u64) -> Vec<Op> {
        vec![Op::Free { ino: n }, Op::SetSize { ino: n, size: n * 3, mtime: Ts::default(), ctime: Ts::default() }]
    }

    fn collect(dir: &Path, after: u64) -> Result<Vec<(u64, Vec<Op>)>, ReplayError> {
        let mut v = Vec::new();
        replay(dir, &UUID, after, |s, o| {
            v.push((s, o));
            Ok(())
        })?;
        Ok(v)
    }

    #[test]
    fn append_replay_rotate() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path(), UUID, 0).unwrap();
        for n in 1..=3 {
            assert_eq!(j.append(&ops(n)).unwrap(), n);
        }
        j.sync().unwrap();
        assert_eq!(j.rotate().unwrap(), 3);
        assert_eq!(j.rotate().unwrap(), 3, "a rotation with nothing new is a no-op");
        j.append(&ops(4)).unwrap();
        let all = collect(d.path(), 0).unwrap();
        assert_eq!(all.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(all[3].1, ops(4));
        j.remove_upto(3).unwrap();
        assert_eq!(list(d.path()).unwrap().len(), 1);
        assert_eq!(collect(d.path(), 3).unwrap().len(), 1);
        // Reopen continues the sequence.
        drop(j);
        let j = Journal::open(d.path(), UUID, 4).unwrap();
        assert_eq!(j.append(&ops(5)).unwrap(), 5);
        assert_eq!(collect(d.path(), 3).unwrap().len(), 2);
    }

    #[test]
    fn crash_while_creating_a_file_leaves_the_journal_readable() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path(), UUID, 0).unwrap();
        j.append(&ops(1)).unwrap();
        drop(j);
        // What a kill -9 between creating and filling in a new journal file leaves behind.
        std::fs::write(d.path().join(NEW_FILE), b"MMAP").unwrap();
        assert_eq!(collect(d.path(), 0).unwrap().len(), 1);
        let j = Journal::open(d.path(), UUID, 1).unwrap();
        j.append(&ops(2)).unwrap();
        assert_eq!(j.rotate().unwrap(), 2);
        assert!(!d.path().join(NEW_FILE).exists());
        assert_eq!(list(d.path()).unwrap().len(), 2);
        assert_eq!(collect(d.path(), 0).unwrap().len(), 2);
    }

    #[test]
    fn torn_tail_is_dropped_corruption_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path(), UUID, 0).unwrap();
        for n in 1..=3 {
            j.append(&ops(n)).unwrap();
        }
        let path = list(d.path()).unwrap()[0].1.clone();
        let full = std::fs::read(&path).unwrap();
        // Cut the last record short: replay keeps 2 records and trims the file.
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        assert_eq!(collect(d.path(), 0).unwrap().len(), 2);
        let trimmed = std::fs::read(&path).unwrap();
        assert!(trimmed.len() < full.len() - 5);
        // Flip one byte inside the first record: refused, file untouched.
        let mut bad = trimmed.clone();
        bad[HEADER_LEN + RECORD_HEADER + 3] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        match collect(d.path(), 0) {
            Err(ReplayError::Corrupt(m)) => assert!(m.contains("checksum"), "{m}"),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), bad);
        // A journal of another store is refused.
        std::fs::write(&path, &trimmed).unwrap();
        assert!(matches!(replay(d.path(), &[1; 16], 0, |_, _| Ok(())), Err(ReplayError::Corrupt(_))));
    }
}
