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

/// Blocks drawn per pixel column: the map is at most this wide.
const WIDTH: u32 = 1024;
const ROW: u32 = 14;

/// Draws the store map: one row per segment, blocks left to right, each pixel the strongest
/// state among the blocks it covers; the named file's blocks are underlined in orange. The
/// legend needs a font (DejaVu Sans from Debian's fonts-dejavu-core); without one the map is
/// drawn without text.
pub fn png(i: &Inspection, out: &Path, title: &str) -> Result<(), String> {
    let per = i.segments.first().map_or(1, |s| s.blocks.len()).max(1);
    let cols = (per as u32).min(WIDTH);
    let blocks_per_px = per.div_ceil(cols as usize);
    let font = load_font();
    let top = if font { 46 } else { 4 };
    let height = top + ROW * i.segments.len().max(1) as u32 + 4;
    let width = cols + 8;
    let root = BitMapBackend::new(out, (width, height)).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", out.display());
    root.fill(&WHITE).map_err(|x| e(&x))?;
    if font {
        let style = ("sans-serif", 13).into_font().color(&BLACK);
        root.draw(&Text::new(title.to_string(), (4, 4), style.clone())).map_err(|x| e(&x))?;
        let mut x = 4;
        for (_, color, label) in COLORS {
            root.draw(&Rectangle::new([(x, 26), (x + 12, 38)], color.filled())).map_err(|x| e(&x))?;
            root.draw(&Text::new(label, (x + 16, 25), style.clone())).map_err(|x| e(&x))?;
            x += 24 + 8 * label.len() as i32;
        }
        if i.file.is_some() {
            root.draw(&Rectangle::new([(x, 36), (x + 12, 38)], RGBColor(245, 150, 30).filled())).map_err(|x| e(&x))?;
            root.draw(&Text::new("the file", (x + 16, 25), style)).map_err(|x| e(&x))?;
        }
    }
    let file_blocks: Vec<(u64, u64)> = i
        .file
        .iter()
        .flat_map(|f| &f.extents)
        .map(|x| (x.segment, x.offset / i.block_size..(x.offset + x.len) / i.block_size))
        .flat_map(|(s, r)| r.map(move |b| (s, b)))
        .collect();
    for (row, s) in i.segments.iter().enumerate() {
        let y = (top + row as u32 * ROW) as i32;
        for c in 0..cols as usize {
            let from = c * blocks_per_px;
            let to = ((c + 1) * blocks_per_px).min(s.blocks.len());
            let Some(state) = s.blocks.get(from..to).and_then(|b| b.iter().max()) else { continue };
            let color = COLORS.iter().find(|(st, _, _)| st == state).map_or(BLACK, |c| c.1);
            let x = 4 + c as i32;
            root.draw(&PathElement::new(vec![(x, y), (x, y + ROW as i32 - 3)], color)).map_err(|x| e(&x))?;
        }
    }
    for (seg, b) in file_blocks {
        let x = 4 + (b as usize / blocks_per_px) as i32;
        let y = (top + seg as u32 * ROW) as i32 + ROW as i32 - 3;
        root.draw(&PathElement::new(vec![(x, y), (x, y + 1)], RGBColor(245, 150, 30))).map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))
}

/// Registers a system font for the legend; false if there is none.
fn load_font() -> bool {
    const FONTS: [&str; 2] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    for path in FONTS {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}
