//! `delg-gpu merge`: the feature folders of one sharded extraction joined
//! into one, after checking that they belong together: the same model,
//! settings and collection, and every shard exactly once.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::features::FeatureSetWriter;
use crate::jobs::collection::Shard;
use crate::jobs::extract::RunRecord;
use crate::jobs::sharded::ShardedSet;

#[derive(Clone, Debug)]
pub struct MergeSummary {
    pub images: usize,
    pub shards: usize,
    /// Lines of the merged errors.txt.
    pub failed: usize,
}

/// Joins the shard folders `inputs` into `out`, with every shard's errors.txt.
pub fn merge_shards(inputs: &[PathBuf], out: &Path) -> Result<MergeSummary> {
    if out.exists() && !out.is_dir() {
        return Err(Error::file(out, "is a file: --out takes a folder"));
    }
    if let Ok(out_real) = std::fs::canonicalize(out) {
        if inputs
            .iter()
            .any(|d| std::fs::canonicalize(d).is_ok_and(|r| r == out_real))
        {
            return Err(Error::file(
                out,
                "is also one of the inputs: merging would overwrite that shard; choose a new folder for --out",
            ));
        }
    }
    // Read in place, an image at a time: only ids and offsets are held
    // whole, so memory does not grow with the descriptors.
    let set = ShardedSet::of_folders(inputs)?;
    let binarized = inputs
        .iter()
        .all(|d| d.join("local_descriptors_bin.npy").exists());
    let mut writer = FeatureSetWriter::create(
        out,
        set.len(),
        set.local_rows(),
        set.global_dim,
        set.local_dim,
        binarized,
    )?;
    for i in 0..set.len() {
        writer.push(&set.image(i)?)?;
    }
    writer.finish()?;

    // Every shard reports the folder entries discovery could not use, so
    // identical lines are kept once.
    let mut lines: Vec<String> = Vec::new();
    for dir in inputs {
        let path = dir.join("errors.txt");
        match std::fs::read_to_string(&path) {
            Ok(text) => lines.extend(text.lines().map(str::to_string)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    lines.sort();
    lines.dedup();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    crate::io::npy::write_atomic(&out.join("errors.txt"), text.as_bytes())?;

    let record = RunRecord {
        shard: None,
        ..set.record.clone()
    };
    let json = serde_json::to_string_pretty(&record).map_err(|e| Error::Internal(e.to_string()))?;
    crate::io::npy::write_atomic(&out.join("config.json"), json.as_bytes())?;
    Ok(MergeSummary {
        images: set.len(),
        shards: inputs.len(),
        failed: lines.len(),
    })
}

/// The run records of the shard folders `inputs`, once they are checked to
/// be every shard of one run (see `check_shard_set`).
pub(crate) fn shard_records(inputs: &[PathBuf]) -> Result<Vec<RunRecord>> {
    let records = inputs
        .iter()
        .map(|d| {
            RunRecord::read(d)?.ok_or_else(|| {
                Error::file(
                    d,
                    "has no config.json: not a folder written by `delg-gpu extract --shard`",
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    check_shard_set(inputs, &records)?;
    Ok(records)
}

/// Errors unless the records are the shards 0..N of one run: one model,
/// settings and collection, each index once, none missing.
fn check_shard_set(inputs: &[PathBuf], records: &[RunRecord]) -> Result<()> {
    let (first, first_dir) = (&records[0], &inputs[0]);
    let mut count = None;
    let mut owner: Vec<Option<&PathBuf>> = Vec::new();
    for (r, dir) in records.iter().zip(inputs) {
        let differ = r.differences(first);
        if !differ.is_empty() {
            return Err(Error::file(
                dir,
                format!(
                    "was extracted with a different {} than {}: shards must come from one extract command",
                    differ.join(", "),
                    first_dir.display()
                ),
            ));
        }
        if r.collection != first.collection {
            return Err(Error::file(
                dir,
                format!(
                    "is a shard of another collection than {} (their lists of images differ): extract every shard from the same folder",
                    first_dir.display()
                ),
            ));
        }
        let shard = r
            .shard
            .as_deref()
            .ok_or_else(|| {
                Error::file(
                    dir,
                    "was extracted without --shard: merge joins the shards of one run",
                )
            })
            .and_then(Shard::parse)?;
        let n = *count.get_or_insert(shard.count);
        if shard.count != n {
            return Err(Error::file(
                dir,
                format!(
                    "is shard {}/{} but {} is one of {n}",
                    shard.index,
                    shard.count,
                    first_dir.display()
                ),
            ));
        }
        owner.resize(n, None);
        if let Some(other) = owner[shard.index].replace(dir) {
            return Err(Error::file(
                dir,
                format!(
                    "is shard {}/{n}, as is {}: give each shard once",
                    shard.index,
                    other.display()
                ),
            ));
        }
    }
    let missing: Vec<String> = owner
        .iter()
        .enumerate()
        .filter(|(_, o)| o.is_none())
        .map(|(i, _)| format!("{i}/{}", owner.len()))
        .collect();
    if !missing.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "shard{} {} missing: pass the folders of all {} shards",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            owner.len()
        )));
    }
    Ok(())
}
