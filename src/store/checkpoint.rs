//! The checkpoint: every inode in one checksummed file, so mount replays only the journal
//! written since. Written to `checkpoint.tmp`, synced, renamed over `checkpoint`, and the
//! directory synced: a crash leaves the old or the new checkpoint, never a mix.
//!
//! ```text
//! magic "MMAPFSCK" | uuid (16) | seq (u64) | next ino (u64) | inode count (u64)
//! inodes (meta::encode_inode) … | crc32 of everything before (u32)
//! ```

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use super::codec::{Dec, Enc};
use super::meta::{Inode, decode_inode};

const MAGIC: &[u8; 8] = b"MMAPFSCK";

/// What a checkpoint holds.
pub struct Snapshot {
    /// Journal records up to this seq are included.
    pub seq: u64,
    pub next_ino: u64,
    pub inodes: Vec<Inode>,
}

/// Starts a checkpoint image; the caller appends the inodes with `meta::encode_inode`.
pub fn begin(uuid: &[u8; 16], seq: u64, next_ino: u64, count: u64) -> Enc {
    let mut e = Enc { buf: Vec::with_capacity(64 + count as usize * 96) };
    e.buf.extend_from_slice(MAGIC);
    e.buf.extend_from_slice(uuid);
    e.u64(seq);
    e.u64(next_ino);
    e.u64(count);
    e
}

/// Seals the image and installs it durably as `dir/checkpoint`.
pub fn install(dir: &Path, mut e: Enc) -> io::Result<()> {
    let crc = crc32fast::hash(&e.buf);
    e.u32(crc);
    let tmp = dir.join("checkpoint.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&e.buf)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("checkpoint"))?;
    File::open(dir)?.sync_all()
}

/// Reads `dir/checkpoint`; `Ok(None)` if there is none yet.
pub fn load(dir: &Path, uuid: &[u8; 16]) -> Result<Option<Snapshot>, String> {
    let path = dir.join("checkpoint");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let fail = |m: &str| format!("checkpoint {}: {m}", path.display());
    if data.len() < 52 || &data[..8] != MAGIC {
        return Err(fail("not a checkpoint of this format"));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(fail("checksum mismatch"));
    }
    if &body[8..24] != uuid {
        return Err(fail("belongs to another store (uuid mismatch)"));
    }
    let mut d = Dec { buf: &body[24..] };
    let trunc = |_| fail("truncated");
    let seq = d.u64().map_err(trunc)?;
    let next_ino = d.u64().map_err(trunc)?;
    let count = d.u64().map_err(trunc)?;
    let mut inodes = Vec::with_capacity(count.min(1 << 24) as usize);
    for _ in 0..count {
        inodes.push(decode_inode(&mut d).map_err(trunc)?);
    }
    if !d.is_empty() {
        return Err(fail("trailing bytes"));
    }
    Ok(Some(Snapshot { seq, next_ino, inodes }))
}
