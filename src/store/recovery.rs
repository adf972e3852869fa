//! Recovery: the metadata rebuilt from the installed checkpoint and the journal records
//! after it, by applying each record exactly as it was applied when it was journaled. A mount
//! does this to the whole table; a background checkpoint (`merge.rs`) to the inodes the
//! records touch, with the same [`replay_op`], so the two can never disagree.

use std::path::Path;

use super::checkpoint;
use super::error::LoadError;
use super::journal;
use super::locks::{rd, wr};
use super::meta::{self, Ino, Op};
use super::table::{Inodes, Node, Table};

/// The metadata of a store as the checkpoint and journal say, verified and not yet acted on.
pub(crate) struct Metadata {
    pub table: Table,
    pub next_ino: u64,
    pub replayed: journal::Replayed,
    /// Inodes in the checkpoint.
    pub checkpointed: usize,
}

/// Loads the checkpoint in `meta_dir` and replays the whole journal after it.
pub(crate) fn load(meta_dir: &Path, uuid: &[u8; 16], block_size: u64) -> Result<Metadata, LoadError> {
    let snap =
        checkpoint::load(meta_dir, uuid)?.ok_or_else(|| LoadError::Corrupt("meta/checkpoint is missing".into()))?;
    let table = Table::new();
    let checkpointed = snap.inodes.len();
    for inode in snap.inodes {
        if table.get(inode.attr.ino).is_some() {
            return Err(LoadError::Corrupt(format!("checkpoint: inode {} twice", inode.attr.ino)));
        }
        table.insert(inode);
    }
    let mut next_ino = snap.next_ino;
    let replayed = replay(&table, meta_dir, uuid, snap.seq, None, block_size, &mut next_ino)?;
    Ok(Metadata { table, next_ino, replayed, checkpointed })
}

/// Applies the journal records in (`after`, `upto`] to `table` — all of them after `after`
/// when `upto` is `None` (a mount: a torn tail of the newest file is allowed and reported);
/// with `upto`, the files a rotation closed, which must hold every record up to it.
pub(crate) fn replay(
    table: &impl Inodes,
    meta_dir: &Path,
    uuid: &[u8; 16],
    after: u64,
    upto: Option<u64>,
    block_size: u64,
    next_ino: &mut u64,
) -> Result<journal::Replayed, LoadError> {
    let apply = |_, ops: Vec<Op>| {
        for op in &ops {
            replay_op(table, op, block_size, next_ino)?;
        }
        Ok(())
    };
    match upto {
        None => journal::replay(meta_dir, uuid, after, apply),
        Some(upto) => journal::replay_upto(meta_dir, uuid, after, upto, apply),
    }
}

/// Applies one journaled op (at mount, and in a background checkpoint).
fn replay_op(table: &impl Inodes, op: &Op, bs: u64, next_ino: &mut u64) -> std::result::Result<(), String> {
    let get = |ino: Ino| -> std::result::Result<Node, String> {
        table.get(ino).ok_or_else(|| format!("inode {ino} does not exist"))
    };
    let bad = |e: meta::Inconsistent| e.0;
    match op {
        Op::Create { ino, parent, .. } => {
            if get(*ino).is_ok() {
                return Err(format!("inode {ino} created twice"));
            }
            meta::apply_create(&mut wr(&*get(*parent)?), op).map_err(bad)?;
            table.insert(meta::created_inode(op));
            *next_ino = (*next_ino).max(ino + 1);
        }
        Op::Unlink { parent, name, time } => {
            let e = meta::apply_unlink_dir(&mut wr(&*get(*parent)?), name, *time).map_err(bad)?;
            meta::apply_unlink_child(&mut wr(&*get(e.ino)?), *time);
        }
        Op::Rename { parent, name, newparent, newname, .. } => {
            let src = rd(&*get(*parent)?).dir().and_then(|d| d.get(name)).cloned().ok_or("rename of a missing name")?;
            let dst = rd(&*get(*newparent)?).dir().and_then(|d| d.get(newname)).map(|e| e.ino);
            let (pn, npn, mn) = (get(*parent)?, get(*newparent)?, get(src.ino)?);
            let rn = dst.map(get).transpose()?;
            let mut pg = wr(&pn);
            let mut npg = if newparent != parent { Some(wr(&npn)) } else { None };
            let mut mg = wr(&mn);
            let mut rg = rn.as_ref().map(|n| wr(n));
            meta::apply_rename(&mut pg, npg.as_deref_mut(), &mut mg, rg.as_deref_mut(), op).map_err(bad)?;
        }
        Op::Free { ino } => {
            let n = get(*ino)?;
            meta::apply_free(&mut wr(&n));
            table.remove(*ino);
        }
        Op::SetAttr { ino, .. } => meta::apply_setattr(&mut wr(&*get(*ino)?), op),
        Op::SetSize { ino, .. } => {
            meta::apply_setsize(&mut wr(&*get(*ino)?), op, bs).map_err(bad)?;
        }
        Op::Map { ino, .. } => meta::apply_map(&mut wr(&*get(*ino)?), op).map_err(bad)?,
        Op::Link { ino, parent, .. } => {
            let (pn, cn) = (get(*parent)?, get(*ino)?);
            meta::apply_link(&mut wr(&pn), &mut wr(&cn), op).map_err(bad)?;
        }
        Op::Exchange { parent, name, newparent, newname, .. } => {
            let a = rd(&*get(*parent)?)
                .dir()
                .and_then(|d| d.get(name))
                .map(|e| e.ino)
                .ok_or("exchange of a missing name")?;
            let b = rd(&*get(*newparent)?)
                .dir()
                .and_then(|d| d.get(newname))
                .map(|e| e.ino)
                .ok_or("exchange of a missing name")?;
            if a == b {
                return Err("exchange of an inode with itself".into());
            }
            let (pn, npn, an, bn) = (get(*parent)?, get(*newparent)?, get(a)?, get(b)?);
            let mut pg = wr(&pn);
            let mut npg = if newparent != parent { Some(wr(&npn)) } else { None };
            meta::apply_exchange(&mut pg, npg.as_deref_mut(), &mut wr(&an), &mut wr(&bn), op).map_err(bad)?;
        }
        Op::SetXattr { ino, .. } | Op::RemoveXattr { ino, .. } => {
            meta::apply_xattr(&mut wr(&*get(*ino)?), op).map_err(bad)?
        }
        Op::Punch { ino, .. } => {
            meta::apply_punch(&mut wr(&*get(*ino)?), op).map_err(bad)?;
        }
    }
    Ok(())
}
