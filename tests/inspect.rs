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
    let img = Image::read(&png);
    // 1,024 columns for 16,384 blocks, the label column and the margins.
    assert_eq!(img.width, 8 + LABEL + 1024 + 16);
    // Text where the title, the totals, the axis and the segment's label go.
    assert!(img.dark(6, 4, 600, 22) > 300, "no title");
    assert!(img.dark(6, 26, 900, 42) > 300, "no totals");
    assert!(img.dark(6 + LABEL, TOP - 24, 8 + LABEL + 1024, TOP - 8) > 100, "no axis labels");
    assert!(img.dark(6, TOP, 6 + LABEL, TOP + 16) >= 4, "segment 0 has no label");
    m.stop();
    let v = inspect(&[m.store.as_os_str(), "--inode".as_ref(), ino.to_string().as_ref()]);
    assert_eq!(v["file"]["size"], 100_000);
    assert_eq!(sum(&v["file"]["extents"], "length"), 102_400, "25 blocks");
}

/// Where `inspect --png` puts things (src/cli/inspect.rs): the label column's width, and the
/// first row of bars.
const LABEL: u32 = 44;
const TOP: u32 = 96;

/// A decoded RGB(A) PNG.
struct Image {
    width: u32,
    height: u32,
    channels: usize,
    px: Vec<u8>,
}

impl Image {
    fn read(path: &Path) -> Image {
        let mut d = png::Decoder::new(fs::File::open(path).unwrap()).read_info().unwrap();
        let mut px = vec![0; d.output_buffer_size()];
        let info = d.next_frame(&mut px).unwrap();
        Image { width: info.width, height: info.height, channels: info.color_type.samples(), px }
    }

    /// Pixels in `x0..x1` × `y0..y1` dark enough to be text (or axis lines).
    fn dark(&self, x0: u32, y0: u32, x1: u32, y1: u32) -> usize {
        let mut n = 0;
        for y in y0..y1.min(self.height) {
            for x in x0..x1.min(self.width) {
                let at = (y * self.width + x) as usize * self.channels;
                n += self.px[at..at + 3].iter().all(|&c| c < 128) as usize;
            }
        }
        n
    }
}

/// A store of 70 segments: the map wraps into two columns of rows, and every segment's row
/// has its label.
#[test]
fn a_png_map_of_many_segments_wraps_and_labels_every_segment() {
    let m = Mounted::new(&["--segment-size", "1M", "--capacity", "80M"]);
    for k in 0..70 {
        fs::write(m.path(&format!("f{k}")), vec![k as u8; 1 << 20]).unwrap();
    }
    let png = m.store.parent().unwrap().join("many.png");
    let out = Command::new(BIN).arg("inspect").arg(&m.mnt).arg("--png").arg(&png).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = Image::read(&png);
    let segments = inspect(&[m.mnt.as_os_str()])["segments"].as_array().unwrap().len();
    assert!(segments >= 70, "{segments} segments");
    // Two columns of 64 rows at most, each a label and a bar of 256 pixels (1 MiB of blocks).
    let col = LABEL + 256 + 16;
    assert_eq!(img.width, (8 + 2 * col).max(640));
    assert_eq!(img.height, TOP + 16 * 64 + 8);
    for k in 0..segments as u32 {
        let (x, y) = (6 + (k / 64) * col, TOP + (k % 64) * 16);
        assert!(img.dark(x, y, x + LABEL, y + 16) >= 4, "segment {k} has no label");
    }
    assert!(img.dark(6, 4, 600, 22) > 300, "no title");
}

#[test]
fn what_is_not_mmapfs_is_refused_clearly() {
    let (ok, err) = common::run(&["inspect".as_ref(), Path::new("/proc").as_os_str()]);
    assert!(!ok && err.contains("neither an mmapfs store, an mmapfs mountpoint, nor a file in one"), "{err}");
    let m = Mounted::new(&[]);
    let (ok, err) = common::run(&["inspect".as_ref(), m.store.as_os_str(), "--inode".as_ref(), "999".as_ref()]);
    assert!(!ok && err.contains("inode 999 is not in the store") && !err.contains("damaged"), "{err}");
}
