//! The superblock: identity and geometry of a store, checksummed, written once at format.
//!
//! ```text
//! 0   magic "MMAPFSSB"      8   format version (u32)   12  block size (u32)
//! 16  uuid (16 bytes)       32  segment size (u64)     40  capacity (u64)
//! 48  crc32 of bytes 0..48 (u32)
//! ```

use std::io;

/// Magic at the start of the superblock file.
pub const MAGIC: &[u8; 8] = b"MMAPFSSB";
/// The on-disk format this build writes. Formats 1 (journal records whose length was not
/// checksummed) and 2 (journal records appended) are still read, and upgraded to 3 (journal
/// records written in place) when opened for writing.
pub const VERSION: u32 = 3;
/// The oldest format this build reads.
pub const OLDEST: u32 = 1;
const LEN: usize = 52;

/// What a store's superblock says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub block_size: u32,
    pub uuid: [u8; 16],
    pub segment_size: u64,
    pub capacity: u64,
}

/// Why a superblock was refused.
#[derive(Debug)]
pub enum SuperblockError {
    /// Not an mmapfs superblock at all.
    Foreign,
    /// An mmapfs store of another format version.
    Version(u32),
    /// Damaged (checksum mismatch or impossible geometry).
    Corrupt(String),
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.block_size.to_le_bytes());
        b.extend_from_slice(&self.uuid);
        b.extend_from_slice(&self.segment_size.to_le_bytes());
        b.extend_from_slice(&self.capacity.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Superblock, SuperblockError> {
        if b.len() < 12 || &b[..8] != MAGIC {
            return Err(SuperblockError::Foreign);
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if !(OLDEST..=VERSION).contains(&version) {
            return Err(SuperblockError::Version(version));
        }
        if b.len() != LEN {
            return Err(SuperblockError::Corrupt(format!("{} bytes, expected {LEN}", b.len())));
        }
        if crc32fast::hash(&b[..48]) != u32_at(48) {
            return Err(SuperblockError::Corrupt("checksum mismatch".into()));
        }
        let sb = Superblock {
            version,
            block_size: u32_at(12),
            uuid: b[16..32].try_into().expect("16 bytes"),
            segment_size: u64_at(32),
            capacity: u64_at(40),
        };
        sb.validate().map_err(SuperblockError::Corrupt)?;
        Ok(sb)
    }

    /// Checks the geometry: the block size is the page size, segments hold whole blocks.
    pub fn validate(&self) -> Result<(), String> {
        let page = page_size();
        if self.block_size as u64 != page {
            return Err(format!("block size {} is not the page size {page}", self.block_size));
        }
        if self.segment_size == 0 || !self.segment_size.is_multiple_of(page) || self.segment_size > (1 << 40) {
            return Err(format!(
                "segment size {} must be a positive multiple of {page} up to 1 TiB",
                self.segment_size
            ));
        }
        if self.capacity < self.segment_size {
            return Err(format!("capacity {} is below one segment ({})", self.capacity, self.segment_size));
        }
        if self.capacity / self.segment_size > 1 << 20 {
            return Err("more than 2^20 segments".into());
        }
        Ok(())
    }

    /// Segments the capacity allows.
    pub fn max_segments(&self) -> u64 {
        self.capacity / self.segment_size
    }

    pub fn blocks_per_segment(&self) -> u64 {
        self.segment_size / self.block_size as u64
    }
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// 16 random bytes from the kernel.
pub fn random_uuid() -> io::Result<[u8; 16]> {
    let mut u = [0u8; 16];
    // SAFETY: the buffer is valid for 16 bytes of writes.
    let n = unsafe { libc::getrandom(u.as_mut_ptr().cast(), u.len(), 0) };
    if n != 16 {
        return Err(io::Error::last_os_error());
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            version: VERSION,
            block_size: page_size() as u32,
            uuid: [3; 16],
            segment_size: 1 << 26,
            capacity: 1 << 34,
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let b = sb().encode();
        assert_eq!(Superblock::decode(&b).unwrap(), sb());
        let mut bad = b.clone();
        bad[40] ^= 1;
        assert!(matches!(Superblock::decode(&bad), Err(SuperblockError::Corrupt(_))));
        let mut v4 = b.clone();
        v4[8] = 4;
        assert!(matches!(Superblock::decode(&v4), Err(SuperblockError::Version(4))));
        // Formats 1 and 2 are still read (and upgraded by the mount).
        for version in [1, 2] {
            let mut old = sb();
            old.version = version;
            assert_eq!(Superblock::decode(&old.encode()).unwrap().version, version);
        }
        assert!(matches!(Superblock::decode(b"hello world!"), Err(SuperblockError::Foreign)));
    }

    /// Every single-byte change and every truncation of a superblock is refused.
    #[test]
    fn fuzzed_damage_is_refused() {
        let b = sb().encode();
        let mut rng = crate::rng::Rng::new(52);
        for i in 0..b.len() {
            for _ in 0..8 {
                let mut m = b.clone();
                m[i] ^= (rng.below(255) + 1) as u8;
                assert!(Superblock::decode(&m).is_err(), "byte {i} changed: {m:?}");
            }
        }
        for cut in 0..b.len() {
            assert!(Superblock::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
