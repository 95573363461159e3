//! Image collections on disk: recursive discovery, deterministic sharding,
//! and decoding overlapped with GPU work.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

use rayon::prelude::*;

use crate::error::{Error, Result};

pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"];

/// Image files below `dir` (recursively), as paths relative to `dir` with
/// '/' separators, sorted so every run and every machine sees one order.
pub fn discover(dir: &Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Err(Error::File {
            path: dir.to_path_buf(),
            reason: "not a folder of images".into(),
        });
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| Error::File {
            path: d.clone(),
            reason: e.to_string(),
        })?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
            {
                if let Ok(rel) = p.strip_prefix(dir) {
                    out.push(
                        rel.components()
                            .map(|c| c.as_os_str().to_string_lossy())
                            .collect::<Vec<_>>()
                            .join("/"),
                    );
                }
            }
        }
    }
    out.sort();
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
                "--shard '{s}': expected i/N with 0 <= i < N, e.g. 0/4"
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
        assert_eq!(
            discover(&dir).unwrap(),
            vec!["a.png", "b/c/d.webp", "b/x.tiff", "z.JPG"]
        );
        assert!(discover(&dir.join("a.png")).is_err());
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
