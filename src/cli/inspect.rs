//! `mmapfs inspect` (see `store::inspect` for what is measured): which store and file a path
//! names, and the report as text, JSON for scripts, and a PNG map drawn with `plotters`.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::json;

use crate::mounts;
use crate::store::inspect::{BlockState, Inspection};

/// `mmapfs inspect PATH`: resolves PATH to a store (and a file's inode) and reports.
pub fn run(path: &Path, inode: Option<u64>, as_json: bool, png_out: Option<&Path>) -> Result<(), String> {
    let (dir, ino) = target(path, inode)?;
    let i = crate::store::inspect::inspect(&dir, ino).map_err(|e| format!("inspecting {}: {e}", dir.display()))?;
    if let Some(out) = png_out {
        png(&i, out, &format!("{}", path.display()))?;
    }
    let out = if as_json {
        serde_json::to_string_pretty(&json(&i)).unwrap_or_default() + "\n"
    } else {
        text(&i, &path.display().to_string())
    };
    super::print(&out)
}

/// The store PATH names (a store, an mmapfs mountpoint, or a file in a mounted mmapfs, whose
/// mount is the nearest ancestor with an mmapfs source), and the inode to show.
fn target(path: &Path, inode: Option<u64>) -> Result<(PathBuf, Option<u64>), String> {
    use std::os::unix::fs::MetadataExt;
    if path.join("superblock").is_file() {
        return Ok((path.to_path_buf(), inode));
    }
    if let Some(store) = mounts::store_of(path) {
        return Ok((store, inode));
    }
    let full = path.canonicalize().map_err(|e| format!("{}: {e}", path.display()))?;
    let store = full.ancestors().skip(1).find_map(mounts::store_of).ok_or_else(|| {
        format!("{} is neither an mmapfs store, an mmapfs mountpoint, nor a file in one", path.display())
    })?;
    let ino = std::fs::metadata(&full).map_err(|e| format!("{}: {e}", path.display()))?.ino();
    Ok((store, Some(ino)))
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

/// The report as text; `name` is what the user named (store, mountpoint or file).
pub fn text(i: &Inspection, name: &str) -> String {
    let bs = i.block_size;
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let mut out = format!(
        "{name}: {} segment{} of {} MiB, {} KiB blocks, {} inodes\n",
        i.segments.len(),
        plural(i.segments.len()),
        i.segment_size >> 20,
        bs >> 10,
        i.inodes
    );
    out += &format!(
        "{:>8} {:>10} {:>10} {:>10} {:>14} {:>13} {:>10}\n",
        "segment", "used MiB", "free MiB", "free runs", "largest free", "resident MiB", "dirty MiB"
    );
    for s in &i.segments {
        out += &format!(
            "{:>8} {:>10} {:>10} {:>10} {:>14} {:>13} {:>10}\n",
            s.index,
            mib(s.used_blocks * bs),
            mib(s.free_blocks * bs),
            s.free_runs,
            format!("{} MiB", mib(s.largest_free_run * bs)),
            mib(s.resident_blocks * bs),
            s.dirty_blocks.map_or("?".into(), |d| mib(d * bs)),
        );
    }
    let free: u64 = i.segments.iter().map(|s| s.free_blocks).sum();
    let largest = i.segments.iter().map(|s| s.largest_free_run).max().unwrap_or(0);
    if free > 0 {
        out += &format!(
            "free space: {} MiB in {} runs, the largest {} MiB ({:.0} % of it)\n",
            mib(free * bs),
            i.segments.iter().map(|s| s.free_runs).sum::<u64>(),
            mib(largest * bs),
            100.0 * largest as f64 / free as f64
        );
    }
    if let Some(f) = &i.file {
        let stored: u64 = f.extents.iter().map(|e| e.len).sum();
        let resident: u64 = f.extents.iter().map(|e| e.resident).sum();
        out += &format!(
            "inode {}: size {} bytes, {} MiB stored in {} extent{} (mean {} KiB), {} MiB resident\n",
            f.ino,
            f.size,
            mib(stored),
            f.extents.len(),
            plural(f.extents.len()),
            if f.extents.is_empty() { 0 } else { (stored / f.extents.len() as u64) >> 10 },
            mib(resident)
        );
        out +=
            &format!("{:>14} {:>8} {:>12} {:>12} {:>12}\n", "file offset", "segment", "offset", "length", "resident");
        for e in &f.extents {
            out += &format!("{:>14} {:>8} {:>12} {:>12} {:>12}\n", e.logical, e.segment, e.offset, e.len, e.resident);
        }
    }
    out
}

pub fn json(i: &Inspection) -> serde_json::Value {
    let bs = i.block_size;
    json!({
        "block_size": bs,
        "segment_size": i.segment_size,
        "inodes": i.inodes,
        "segments": i.segments.iter().map(|s| json!({
            "index": s.index,
            "used_bytes": s.used_blocks * bs,
            "free_bytes": s.free_blocks * bs,
            "free_runs": s.free_runs,
            "largest_free_run_bytes": s.largest_free_run * bs,
            "resident_bytes": s.resident_blocks * bs,
            "dirty_bytes": s.dirty_blocks.map(|d| d * bs),
        })).collect::<Vec<_>>(),
        "file": i.file.as_ref().map(|f| json!({
            "ino": f.ino,
            "size": f.size,
            "extents": f.extents.iter().map(|e| json!({
                "file_offset": e.logical, "segment": e.segment, "segment_offset": e.offset,
                "length": e.len, "resident_bytes": e.resident,
            })).collect::<Vec<_>>(),
        })),
    })
}

const COLORS: [(BlockState, RGBColor, &str); 4] = [
    (BlockState::Free, RGBColor(225, 225, 225), "free"),
    (BlockState::Used, RGBColor(70, 110, 190), "used"),
    (BlockState::Resident, RGBColor(60, 170, 90), "used, resident"),
    (BlockState::Dirty, RGBColor(215, 60, 50), "used, dirty"),
];

/// Pixel columns of one segment's bar when all segments fit in one column of rows.
const WIDTH: u32 = 1024;
/// The narrowest bar, when segments wrap into several columns of rows.
const MIN_BAR: u32 = 256;
const ROW: u32 = 16;
/// Rows per column before the map wraps into another column.
const ROWS: usize = 64;
/// Room left of each bar for the segment's label.
const LABEL: u32 = 44;
const GAP: u32 = 16;
/// The font every label is drawn in, compiled in so that every machine draws the same map
/// (DejaVu Sans, Bitstream Vera license: `font/LICENSE-DejaVu.txt`).
const FONT: &[u8] = include_bytes!("font/DejaVuSans.ttf");

/// Draws the store map: a title with the totals, a legend, and one labelled row per segment
/// (blocks left to right, each pixel the strongest state among the blocks it covers, under an
/// axis in MiB); the named file's blocks are underlined in orange. More than [`ROWS`]
/// segments wrap into columns of rows, their bars narrowed down to [`MIN_BAR`] pixels, so a
/// store of hundreds of segments stays a picture one can read.
pub fn png(i: &Inspection, out: &Path, title: &str) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", out.display());
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| e(&"the built-in font"))?;
    let per = i.segments.first().map_or(1, |s| s.blocks.len()).max(1);
    let n = i.segments.len().max(1);
    let columns = n.div_ceil(ROWS) as u32;
    let rows = n.min(ROWS) as u32;
    let bar = (WIDTH / columns).max(MIN_BAR).min(per as u32);
    let blocks_per_px = per.div_ceil(bar as usize);
    let col_width = LABEL + bar + GAP;
    let top = 96;
    let width = (8 + columns * col_width).max(640);
    let height = top + ROW * rows + 8;
    let root = BitMapBackend::new(out, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let text = |size| ("sans-serif", size).into_font().color(&BLACK);
    let mib = |blocks: u64| (blocks * i.block_size) as f64 / (1u64 << 20) as f64;
    let sum = |f: &dyn Fn(&crate::store::inspect::SegmentView) -> u64| i.segments.iter().map(f).sum::<u64>();
    let dirty = i.segments.iter().map(|s| s.dirty_blocks).sum::<Option<u64>>();
    let totals = format!(
        "{} segment{} of {} MiB: used {:.1} MiB, free {:.1} MiB, resident {:.1} MiB, dirty {}, largest free run {:.1} MiB",
        i.segments.len(),
        if i.segments.len() == 1 { "" } else { "s" },
        i.segment_size >> 20,
        mib(sum(&|s| s.used_blocks)),
        mib(sum(&|s| s.free_blocks)),
        mib(sum(&|s| s.resident_blocks)),
        dirty.map_or_else(|| "unknown".to_string(), |d| format!("{:.1} MiB", mib(d))),
        mib(i.segments.iter().map(|s| s.largest_free_run).max().unwrap_or(0)),
    );
    root.draw(&Text::new(format!("mmapfs store map: {title}"), (6, 4), text(16))).map_err(|x| e(&x))?;
    root.draw(&Text::new(totals, (6, 26), text(12))).map_err(|x| e(&x))?;
    let mut x = 6;
    let legend = COLORS.iter().map(|c| (c.1, c.2)).chain(i.file.as_ref().map(|_| (FILE_COLOR, "the file")));
    for (color, label) in legend {
        root.draw(&Rectangle::new([(x, 48), (x + 12, 60)], color.filled())).map_err(|x| e(&x))?;
        root.draw(&Text::new(label, (x + 16, 47), text(12))).map_err(|x| e(&x))?;
        x += 28 + 7 * label.len() as i32;
    }
    // The axis over each column of bars: offsets in the segment, in MiB.
    let seg_mib = i.segment_size as f64 / (1u64 << 20) as f64;
    for c in 0..columns {
        let x0 = (6 + c * col_width + LABEL) as i32;
        let y = top as i32 - 6;
        root.draw(&PathElement::new(vec![(x0, y), (x0 + bar as i32, y)], BLACK)).map_err(|x| e(&x))?;
        // Quarters on a wide bar, halves on a narrow one: labels never run into each other.
        let parts = if bar >= 400 { 4 } else { 2 };
        for t in 0..=parts {
            let tx = x0 + (bar as i32 - 1) * t / parts;
            root.draw(&PathElement::new(vec![(tx, y - 3), (tx, y)], BLACK)).map_err(|x| e(&x))?;
            let label = format!("{} MiB", seg_mib * t as f64 / parts as f64);
            let lx = if t == parts { tx - 6 * label.len() as i32 } else { tx - if t == 0 { 0 } else { 14 } };
            root.draw(&Text::new(label, (lx, y - 17), text(11))).map_err(|x| e(&x))?;
        }
    }
    let file_blocks: Vec<(u64, u64)> = i
        .file
        .iter()
        .flat_map(|f| &f.extents)
        .map(|x| (x.segment, x.offset / i.block_size..(x.offset + x.len) / i.block_size))
        .flat_map(|(s, r)| r.map(move |b| (s, b)))
        .collect();
    let origin = |seg: usize| {
        let (c, r) = ((seg / ROWS) as u32, (seg % ROWS) as u32);
        ((6 + c * col_width) as i32, (top + r * ROW) as i32)
    };
    for (k, s) in i.segments.iter().enumerate() {
        let (x0, y) = origin(k);
        root.draw(&Text::new(format!("{}", s.index), (x0, y + 1), text(11))).map_err(|x| e(&x))?;
        for c in 0..bar as usize {
            let from = c * blocks_per_px;
            let to = ((c + 1) * blocks_per_px).min(s.blocks.len());
            let Some(state) = s.blocks.get(from..to).and_then(|b| b.iter().max()) else { continue };
            let color = COLORS.iter().find(|(st, _, _)| st == state).map_or(BLACK, |c| c.1);
            let x = x0 + LABEL as i32 + c as i32;
            root.draw(&PathElement::new(vec![(x, y), (x, y + ROW as i32 - 4)], color)).map_err(|x| e(&x))?;
        }
    }
    for (seg, b) in file_blocks {
        let (x0, y) = origin(seg as usize);
        let x = x0 + LABEL as i32 + (b as usize / blocks_per_px) as i32;
        let y = y + ROW as i32 - 3;
        root.draw(&PathElement::new(vec![(x, y), (x, y + 1)], FILE_COLOR)).map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))
}

const FILE_COLOR: RGBColor = RGBColor(245, 150, 30);
