//! Data written through the mount reads back byte for byte: round trips from 0 to 64 MiB,
//! unaligned offsets, random-offset writes checked against a reference buffer, sparse files
//! that cost no space, truncation both ways, and the open flags that shape writes.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

use common::Mounted;

#[test]
fn round_trips_from_empty_to_64_mib() {
    let m = Mounted::new(&[]);
    let mut rng = common::seeded_rng();
    for &size in &[0usize, 1, 4095, 4096, 4097, 65_537, 1 << 20, (3 << 20) + 17, 64 << 20] {
        let mut data = vec![0u8; size];
        rng.fill(&mut data);
        let p = m.path(&format!("f{size}"));
        fs::write(&p, &data).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().len(), size as u64);
        let back = fs::read(&p).unwrap();
        assert!(back == data, "size {size}: content differs");
    }
}

#[test]
fn unaligned_and_random_offset_writes_match_a_reference() {
    let m = Mounted::new(&[]);
    let mut rng = common::seeded_rng();
    let len = 3 << 20;
    let mut model = vec![0u8; 0];
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.path("r")).unwrap();
    for i in 0..400 {
        let off = rng.below(len as u64) as usize;
        let n = 1 + rng.below(if i % 10 == 0 { 300_000 } else { 9000 }) as usize;
        let mut buf = vec![0u8; n];
        rng.fill(&mut buf);
        f.write_all_at(&buf, off as u64).unwrap();
        if model.len() < off + n {
            model.resize(off + n, 0);
        }
        model[off..off + n].copy_from_slice(&buf);
        // Spot-check an unaligned read around the write.
        let lo = off.saturating_sub(rng.below(5000) as usize);
        let hi = (off + n + rng.below(5000) as usize).min(model.len());
        let mut got = vec![0u8; hi - lo];
        f.read_exact_at(&mut got, lo as u64).unwrap();
        assert!(got == model[lo..hi], "op {i}: read {lo}..{hi} differs");
    }
    assert_eq!(f.metadata().unwrap().len(), model.len() as u64);
    assert!(fs::read(m.path("r")).unwrap() == model);
}

#[test]
fn sparse_files_cost_nothing_and_read_zeros() {
    let m = Mounted::new(&[]);
    let before = statvfs_free(&m.mnt);
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.path("sparse")).unwrap();
    f.set_len(10 << 30).unwrap();
    f.write_all_at(b"end", (10 << 30) - 3).unwrap();
    f.write_all_at(b"middle", 5 << 30).unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(md.len(), 10 << 30);
    assert_eq!(md.blocks(), 16, "two 4 KiB blocks allocated, st_blocks in 512 B units");
    let mut buf = vec![1u8; 1 << 20];
    f.read_exact_at(&mut buf, 3 << 30).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "hole reads zeros");
    let mut s = [0u8; 10];
    f.read_exact_at(&mut s, (5 << 30) - 2).unwrap();
    assert_eq!(&s, b"\0\0middle\0\0");
    assert!(before - statvfs_free(&m.mnt) <= 2 * 4096, "a 10 GiB sparse file costs two blocks");
    // The segment files on disk did not grow past one segment either.
    let seg_bytes: u64 =
        fs::read_dir(m.store.join("segments")).unwrap().map(|e| e.unwrap().metadata().unwrap().blocks() * 512).sum();
    assert!(seg_bytes <= 64 << 20, "segments use {seg_bytes} bytes");
}

fn statvfs_free(p: &std::path::Path) -> u64 {
    let c = common::cstr(p);
    // SAFETY: zeroed statvfs is a valid out-buffer; c is a valid path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a plain libc call on valid C strings and buffers that outlive it.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bfree * s.f_frsize
}

#[test]
fn truncate_shrinks_into_a_block_and_grows_with_zeros() {
    let m = Mounted::new(&[]);
    let p = m.path("t");
    fs::write(&p, vec![0xAB; 10_000]).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.set_len(5000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 5000);
    f.set_len(12_000).unwrap();
    let data = fs::read(&p).unwrap();
    assert_eq!(data.len(), 12_000);
    assert!(data[..5000].iter().all(|&b| b == 0xAB));
    assert!(data[5000..].iter().all(|&b| b == 0), "regrown range must read zeros");
    // Shrink then write past the end: the gap reads zeros too.
    f.set_len(100).unwrap();
    f.write_all_at(b"x", 6000).unwrap();
    let data = fs::read(&p).unwrap();
    assert_eq!(data.len(), 6001);
    assert!(data[100..6000].iter().all(|&b| b == 0));
    assert!(data[..100].iter().all(|&b| b == 0xAB));
    // Truncate to zero frees the blocks.
    f.set_len(0).unwrap();
    assert_eq!(f.metadata().unwrap().blocks(), 0);
}

#[test]
fn append_trunc_and_excl() {
    let m = Mounted::new(&[]);
    let p = m.path("a");
    fs::write(&p, b"hello").unwrap();
    let mut a = OpenOptions::new().append(true).open(&p).unwrap();
    a.write_all(b" world").unwrap();
    let mut other = OpenOptions::new().write(true).open(&p).unwrap();
    other.write_all(b"J").unwrap();
    a.write_all(b"!").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"Jello world!");
    drop(OpenOptions::new().write(true).truncate(true).open(&p).unwrap());
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    let e = OpenOptions::new().write(true).create_new(true).open(&p).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(m.path("new")).unwrap();
    assert_eq!(fs::metadata(m.path("new")).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn sequential_reads_and_seeks() {
    let m = Mounted::new(&[]);
    let mut rng = common::seeded_rng();
    let mut data = vec![0u8; 5 << 20];
    rng.fill(&mut data);
    fs::write(m.path("s"), &data).unwrap();
    let mut f = File::open(m.path("s")).unwrap();
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert!(got == data);
    f.seek(SeekFrom::Start(4_000_001)).unwrap();
    let mut b = [0u8; 3];
    f.read_exact(&mut b).unwrap();
    assert_eq!(b, data[4_000_001..4_000_004]);
    // Reads at and past EOF return nothing.
    assert_eq!(f.read_at(&mut b, data.len() as u64).unwrap(), 0);
    assert_eq!(f.read_at(&mut b, 1 << 40).unwrap(), 0);
}
