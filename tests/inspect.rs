//! `mmapfs inspect`: a file's extents and residency, the store's segments, dirty pages that an
//! fsync cleans, the PNG map, an unmounted store by inode number, and clear errors.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{BIN, Mounted};

fn inspect(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = Command::new(BIN).arg("inspect").args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sum(v: &serde_json::Value, field: &str) -> u64 {
    v.as_array().unwrap().iter().map(|x| x[field].as_u64().unwrap()).sum()
}

#[test]
fn a_file_shows_its_extents_residency_and_dirty_pages() {
    let m = Mounted::new(&["--segment-size", "4M"]);
    // 6 MiB written in one go: more than a segment, so at least two extents.
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(m.path("big")).unwrap();
    f.write_all(&vec![7u8; 6 << 20]).unwrap();
    fs::write(m.path("small"), b"hello").unwrap();
    let v = inspect(&[m.path("big").as_os_str()]);
    let file = &v["file"];
    assert_eq!(file["ino"].as_u64(), Some(fs::metadata(m.path("big")).unwrap().ino()));
    assert_eq!(file["size"], 6 << 20);
    let extents = &file["extents"];
    assert!(extents.as_array().unwrap().len() >= 2, "{extents}");
    assert_eq!(sum(extents, "length"), 6 << 20, "the extents cover the file");
    let mut next = 0;
    for e in extents.as_array().unwrap() {
        assert_eq!(e["file_offset"].as_u64(), Some(next), "extents in file order: {extents}");
        next += e["length"].as_u64().unwrap();
        assert!(e["segment_offset"].as_u64().unwrap() + e["length"].as_u64().unwrap() <= 4 << 20);
    }
    assert_eq!(sum(extents, "resident_bytes"), 6 << 20, "just written: all in the page cache");
    let segs = &v["segments"];
    assert_eq!(segs.as_array().unwrap().len(), 2);
    assert!(sum(segs, "used_bytes") >= (6 << 20) + 4096);
    // Written, not synced: dirty; an fsync cleans exactly the store's pages.
    assert!(sum(segs, "dirty_bytes") >= 6 << 20, "{segs}");
    f.sync_all().unwrap();
    fs::File::open(m.path("small")).unwrap().sync_all().unwrap();
    let v = inspect(&[m.mnt.as_os_str()]);
    assert_eq!(sum(&v["segments"], "dirty_bytes"), 0, "{}", v["segments"]);
    assert!(v["file"].is_null(), "a mountpoint shows the store only");
}

#[test]
fn png_map_and_an_unmounted_store_by_inode() {
    let mut m = Mounted::new(&[]);
    fs::write(m.path("a"), vec![1u8; 100_000]).unwrap();
    let ino = fs::metadata(m.path("a")).unwrap().ino();
    let png = m.store.parent().unwrap().join("map.png");
    let out = Command::new(BIN).arg("inspect").arg(m.path("a")).arg("--png").arg(&png).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 segment of 64 MiB") && text.contains("in 1 extent "), "{text}");
    let img = fs::read(&png).unwrap();
    assert_eq!(&img[..8], b"\x89PNG\r\n\x1a\n");
    // Width from the IHDR chunk: 1,024 columns for 16,384 blocks, plus the margins.
    assert_eq!(u32::from_be_bytes(img[16..20].try_into().unwrap()), 1024 + 8);
    m.stop();
    let v = inspect(&[m.store.as_os_str(), "--inode".as_ref(), ino.to_string().as_ref()]);
    assert_eq!(v["file"]["size"], 100_000);
    assert_eq!(sum(&v["file"]["extents"], "length"), 102_400, "25 blocks");
}

#[test]
fn what_is_not_mmapfs_is_refused_clearly() {
    let (ok, err) = common::run(&["inspect".as_ref(), Path::new("/proc").as_os_str()]);
    assert!(!ok && err.contains("neither an mmapfs store, an mmapfs mountpoint, nor a file in one"), "{err}");
    let m = Mounted::new(&[]);
    let (ok, err) = common::run(&["inspect".as_ref(), m.store.as_os_str(), "--inode".as_ref(), "999".as_ref()]);
    assert!(!ok && err.contains("inode 999 is not in the store") && !err.contains("damaged"), "{err}");
}
