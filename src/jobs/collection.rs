//! Image collections on disk: recursive discovery, deterministic sharding,
//! and decoding overlapped with GPU work.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

use rayon::prelude::*;

use crate::error::{Error, Result};

pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"];

/// What a walk of a collection found.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Image files as paths relative to the folder with '/' separators,
    /// sorted so every run and every machine sees one order.
    pub images: Vec<String>,
    /// Entries that could not be listed or named, as (path shown to the user,
    /// reason); they belong in errors.txt.
    pub problems: Vec<(String, String)>,
}

/// Image files below `dir` (recursively). Symbolic links to folders are
/// followed, but a link back into its own ancestry (a loop) is not, and a
/// file reached through two routes is listed once, by its route without
/// links when it has one. An unreadable folder or
/// a name that ids.txt cannot hold becomes a problem, not a failure.
/// `progress` counts the images found, for large trees.
pub fn discover(dir: &Path, progress: &indicatif::ProgressBar) -> Result<Discovery> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "not a folder of images"));
    }
    let mut found = Discovery::default();
    // File identity → index of its id in `found.images`.
    let mut seen = std::collections::HashMap::new();
    let real_dir = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name();
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                found.problems.extend(walk_problem(dir, &e));
                continue;
            }
        };
        if entry.file_type().is_dir() || !has_image_extension(entry.path()) {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let id = match relative_id(rel) {
            Ok(id) => id,
            Err(reason) => {
                found.problems.push((shown(rel), reason));
                continue;
            }
        };
        match seen.entry(file_identity(&entry)) {
            std::collections::hash_map::Entry::Occupied(first) => {
                // The same file through another link: keep the direct route.
                let direct =
                    std::fs::canonicalize(entry.path()).is_ok_and(|p| p == real_dir.join(rel));
                if direct {
                    found.images[*first.get()] = id;
                }
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(found.images.len());
                found.images.push(id);
                progress.set_position(found.images.len() as u64);
            }
        }
    }
    found.images.sort();
    Ok(found)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .map(|x| x.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.as_str()))
}

/// The file behind a path (device and inode on Unix), so hard and symbolic
/// links to one file count once.
fn file_identity(entry: &walkdir::DirEntry) -> (u64, u64, std::path::PathBuf) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = entry.metadata() {
            return (m.dev(), m.ino(), std::path::PathBuf::new());
        }
    }
    let real = std::fs::canonicalize(entry.path()).unwrap_or_else(|_| entry.path().to_path_buf());
    (0, 0, real)
}

/// A relative path as an id: UTF-8 with '/' separators and no control
/// characters, since ids.txt holds one id per line and errors.txt is
/// tab-separated.
pub fn relative_id(rel: &Path) -> std::result::Result<String, String> {
    let mut parts = Vec::new();
    for c in rel.components() {
        let part = c.as_os_str().to_str().ok_or_else(|| {
            "file name is not valid UTF-8, which ids.txt cannot hold: rename the file".to_string()
        })?;
        if part.chars().any(char::is_control) {
            return Err(
                "file name contains a line break or another control character, which ids.txt \
                 cannot hold: rename the file"
                    .into(),
            );
        }
        parts.push(part);
    }
    Ok(parts.join("/"))
}

/// A path as one printable line (control characters and invalid UTF-8 escaped).
pub fn shown(path: &Path) -> String {
    path.to_string_lossy().escape_debug().to_string()
}

/// The problem a failed walk step means to the user; `None` for a broken
/// link that would not have been an image anyway.
fn walk_problem(dir: &Path, e: &walkdir::Error) -> Option<(String, String)> {
    let path = e.path().unwrap_or(dir);
    let rel = path.strip_prefix(dir).unwrap_or(path);
    let shown_rel = if rel.as_os_str().is_empty() {
        shown(dir)
    } else {
        shown(rel)
    };
    let reason = if let Some(ancestor) = e.loop_ancestor() {
        let back = ancestor.strip_prefix(dir).unwrap_or(ancestor);
        format!(
            "symbolic link loop back to '{}': not followed",
            if back.as_os_str().is_empty() {
                ".".into()
            } else {
                shown(back)
            }
        )
    } else if path.is_dir() {
        format!("cannot list this folder: {}", io_reason(e))
    } else if has_image_extension(path) {
        format!("cannot read: {} (a broken link?)", io_reason(e))
    } else {
        return None;
    };
    Some((shown_rel, reason))
}

fn io_reason(e: &walkdir::Error) -> String {
    e.io_error()
        .map_or_else(|| e.to_string(), |io| io.to_string())
}

/// The images and crop boxes of a `--boxes` CSV: `path,x1,y1,x2,y2` per
/// line, paths relative to the collection, finite boxes with x1 < x2 and
/// y1 < y2.
pub fn read_box_list(csv: &Path) -> Result<Vec<(String, crate::jobs::extract::CropBox)>> {
    let text = std::fs::read_to_string(csv).map_err(|e| Error::io(csv, e))?;
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let nums: Vec<f64> = f
            .get(1..)
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x.parse().ok())
            .collect();
        match (&f[..], &nums[..]) {
            ([path, _, _, _, _], &[x1, y1, x2, y2])
                if !path.is_empty() && nums.iter().all(|v| v.is_finite()) && x1 < x2 && y1 < y2 =>
            {
                out.push((path.to_string(), [x1, y1, x2, y2]));
            }
            _ => {
                return Err(Error::file(
                    csv,
                    format!(
                        "line {}: expected path,x1,y1,x2,y2 (finite, x1 < x2, y1 < y2)",
                        n + 1
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// A shard `i/N`: the images whose path hash falls in bucket i, so shards
/// are disjoint, cover the collection, and stay stable when files are added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || {
            Error::InvalidArgument(format!(
                "--shard '{s}': expected i/N with 0 <= i < N (e.g. 0/4), or auto in a Slurm array or Kubernetes Indexed Job"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    pub fn contains(&self, rel_path: &str) -> bool {
        let h = rel_path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        (h % self.count as u64) as usize == self.index
    }
}

/// Decodes (and prepares) images on CPU threads ahead of the consumer, in
/// order, keeping at most `ahead` ready; `prepare(relative, full path)` runs
/// on rayon's pool.
pub fn prefetch<T: Send + 'static>(
    root: PathBuf,
    paths: Vec<String>,
    ahead: usize,
    prepare: impl Fn(&str, &Path) -> Result<T> + Send + Sync + 'static,
) -> Receiver<(String, Result<T>)> {
    let (tx, rx) = sync_channel(ahead.max(1));
    let batch = rayon::current_num_threads().max(1) * 2;
    std::thread::spawn(move || {
        for chunk in paths.chunks(batch) {
            let done: Vec<(String, Result<T>)> = chunk
                .par_iter()
                .map(|rel| (rel.clone(), prepare(rel, &root.join(rel))))
                .collect();
            for item in done {
                if tx.send(item).is_err() {
                    return; // the consumer stopped
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_is_recursive_sorted_and_filtered() {
        let dir = std::env::temp_dir().join(format!("delg-disc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b/c")).unwrap();
        for f in ["z.JPG", "a.png", "b/c/d.webp", "b/notes.txt", "b/x.tiff"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let hidden = indicatif::ProgressBar::hidden();
        let found = discover(&dir, &hidden).unwrap();
        assert_eq!(
            found.images,
            vec!["a.png", "b/c/d.webp", "b/x.tiff", "z.JPG"]
        );
        assert!(found.problems.is_empty(), "{:?}", found.problems);
        assert!(discover(&dir.join("a.png"), &hidden).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shards_partition_the_collection() {
        let paths: Vec<String> = (0..1000).map(|i| format!("img{i}.jpg")).collect();
        let shards: Vec<Shard> = (0..3)
            .map(|i| Shard::parse(&format!("{i}/3")).unwrap())
            .collect();
        for p in &paths {
            assert_eq!(shards.iter().filter(|s| s.contains(p)).count(), 1);
        }
        let sizes: Vec<usize> = shards
            .iter()
            .map(|s| paths.iter().filter(|p| s.contains(p)).count())
            .collect();
        assert!(sizes.iter().all(|&n| n > 250), "{sizes:?}");
        assert!(
            Shard::parse("3/3").is_err()
                && Shard::parse("x").is_err()
                && Shard::parse("0/0").is_err()
        );
    }

    #[test]
    fn prefetch_keeps_order_and_reports_failures() {
        let paths: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        let rx = prefetch(PathBuf::from("/"), paths.clone(), 3, |_: &str, p: &Path| {
            let n: usize = p
                .file_name()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if n % 7 == 3 {
                Err(Error::InvalidArgument(format!("bad {n}")))
            } else {
                Ok(n * 2)
            }
        });
        let got: Vec<(String, Result<usize>)> = rx.iter().collect();
        assert_eq!(
            got.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
            paths
        );
        assert!(
            got[3].1.is_err() && got[10].1.is_err() && got[4].1.as_ref().is_ok_and(|v| *v == 8)
        );
    }
}
