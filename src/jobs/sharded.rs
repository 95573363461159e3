//! A parent folder of shard folders (from `extract --shard`) searched in
//! place, without `merge`: global descriptors are streamed from each shard's
//! global.npy a chunk at a time, and re-ranking reads the local features of
//! only the shortlisted images, by their offsets. The images are numbered in
//! id order, as `merge` orders them, so rankings and indices are the ones
//! the merged folder gives.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::features::{FeatureFiles, ImageFeatures};
use crate::jobs::collection::Shard;
use crate::jobs::extract::RunRecord;
use crate::jobs::search::{GlobalSearch, ImageLocals, LocalFeatures};

/// One shard's feature files, opened but not read.
#[derive(Debug)]
struct ShardFiles {
    dir: PathBuf,
    /// The set's index of each of the shard's images.
    index: Vec<usize>,
    files: FeatureFiles,
}

/// Every shard of one extraction, used as one feature set.
#[derive(Debug)]
pub struct ShardedSet {
    /// Every image id of every shard, sorted.
    pub ids: Vec<String>,
    pub global_dim: usize,
    pub local_dim: usize,
    pub model_id: Option<String>,
    /// The run record of the shard first in `shard_folders` order (all agree).
    pub(crate) record: RunRecord,
    shards: Vec<ShardFiles>,
    /// (shard, row within it) of each image.
    place: Vec<(usize, usize)>,
}

/// The sub-folders of `dir` whose config.json records a shard, by name.
/// Other sub-folders (a merged copy, logs) are not part of the set.
fn shard_folders(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.join("config.json").is_file()
            && RunRecord::read(&path)?.is_some_and(|r| r.shard.is_some())
        {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

impl ShardedSet {
    /// Whether `dir` is a parent of shard folders rather than a feature folder.
    pub fn is_parent(dir: &Path) -> Result<bool> {
        Ok(dir.is_dir() && !dir.join("ids.txt").exists() && !shard_folders(dir)?.is_empty())
    }

    /// Opens the shard folders below `dir`, which must be every shard of
    /// one extraction (one listing, model and settings), each finished.
    pub fn open(dir: &Path) -> Result<ShardedSet> {
        let folders = shard_folders(dir)?;
        if folders.is_empty() {
            return Err(Error::file(
                dir,
                "holds neither features (ids.txt) nor shard folders (written by `delg-gpu extract --shard`)",
            ));
        }
        ShardedSet::of_folders(&folders)
    }

    /// Opens the shard folders `folders`, which must be every shard of one
    /// extraction, each finished.
    pub fn of_folders(folders: &[PathBuf]) -> Result<ShardedSet> {
        let records = crate::jobs::merge::shard_records(folders)?;
        let mut by_index: Vec<(usize, &PathBuf)> = records
            .iter()
            .zip(folders)
            .map(|(r, d)| {
                Ok((
                    Shard::parse(r.shard.as_deref().unwrap_or_default())?.index,
                    d,
                ))
            })
            .collect::<Result<_>>()?;
        by_index.sort();
        let mut shards = Vec::new();
        let mut all: Vec<(String, usize, usize)> = Vec::new();
        for (s, (_, folder)) in by_index.iter().enumerate() {
            let mut files = FeatureFiles::open(folder)?;
            let ids = std::mem::take(&mut files.ids);
            let files = ShardFiles {
                dir: folder.to_path_buf(),
                index: vec![0; ids.len()],
                files,
            };
            if let Some(first) = shards.first() {
                check_same_sizes(&files, first)?;
            }
            all.extend(ids.into_iter().enumerate().map(|(row, id)| (id, s, row)));
            shards.push(files);
        }
        all.sort();
        if let Some(w) = all.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::file(
                &shards[w[1].1].dir,
                format!(
                    "'{}' also appears in {}: were the shards extracted from one collection with one --shard count?",
                    w[1].0,
                    shards[w[0].1].dir.display()
                ),
            ));
        }
        let mut place = Vec::with_capacity(all.len());
        let mut ids = Vec::with_capacity(all.len());
        for (i, (id, s, row)) in all.into_iter().enumerate() {
            shards[s].index[row] = i;
            place.push((s, row));
            ids.push(id);
        }
        Ok(ShardedSet {
            ids,
            global_dim: shards[0].files.global.shape[1],
            local_dim: shards[0].files.descriptors.shape[1],
            model_id: Some(records[0].model_id.clone()).filter(|m| !m.is_empty()),
            record: records[0].clone(),
            shards,
            place,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Local feature rows of all shards together.
    pub fn local_rows(&self) -> usize {
        self.shards.iter().map(|s| s.files.descriptors.rows()).sum()
    }

    /// Everything extracted from image `i`, read from its shard's files.
    pub fn image(&self, i: usize) -> Result<ImageFeatures> {
        let (s, row) = self.place[i];
        let shard = &self.shards[s];
        let range = shard.files.local_range(row);
        Ok(ImageFeatures {
            id: self.ids[i].clone(),
            global: shard.files.global.read(row..row + 1)?,
            descriptors: shard.files.descriptors.read(range.clone())?,
            locations: shard.files.locations.read(range.clone())?,
            scales: shard.files.scales.read(range.clone())?,
            attention: shard.files.attention.read(range)?,
        })
    }

    /// Scores every image's global descriptor, a chunk of rows in memory
    /// at a time. Chunks are filled across shard boundaries, so they have
    /// the sizes (and device plans) of a search over one folder.
    pub fn search_global(&self, search: &mut GlobalSearch) -> Result<()> {
        let rows = search.chunk_rows();
        let mut chunk: Vec<f32> = Vec::with_capacity(rows * self.global_dim);
        let mut indices: Vec<usize> = Vec::with_capacity(rows);
        for shard in &self.shards {
            let n = shard.files.global.rows();
            let mut start = 0;
            while start < n {
                let end = n.min(start + rows - indices.len());
                chunk.extend(shard.files.global.read::<f32>(start..end)?);
                indices.extend_from_slice(&shard.index[start..end]);
                start = end;
                if indices.len() == rows {
                    search.push_indexed(&chunk, &indices)?;
                    chunk.clear();
                    indices.clear();
                }
            }
        }
        search.push_indexed(&chunk, &indices)
    }
}

impl LocalFeatures for ShardedSet {
    fn local_dim(&self) -> usize {
        self.local_dim
    }

    fn locals(&self, i: usize) -> Result<ImageLocals> {
        let (s, row) = self.place[i];
        let shard = &self.shards[s];
        let range = shard.files.local_range(row);
        Ok(ImageLocals {
            descriptors: shard.files.descriptors.read(range.clone())?,
            locations: shard.files.locations.read(range)?,
        })
    }
}

fn check_same_sizes(shard: &ShardFiles, first: &ShardFiles) -> Result<()> {
    let dims = |s: &ShardFiles| (s.files.global.shape[1], s.files.descriptors.shape[1]);
    if dims(shard) != dims(first) {
        return Err(Error::file(
            &shard.dir,
            format!(
                "holds {:?} (global, local) descriptor sizes but {} holds {:?}: shards must come from one model",
                dims(shard),
                first.dir.display(),
                dims(first)
            ),
        ));
    }
    Ok(())
}
