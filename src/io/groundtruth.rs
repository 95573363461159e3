//! Retrieval ground truth in the project's `gnd.json` form (see
//! `instance_retrieval_dev/README.md`; `tools/gnd_pkl_to_json.py` converts
//! the official revisitop pickles): the database image names, the queries
//! with their easy/hard/junk images, labels and image sizes. Loading checks
//! that every name a query or label uses exists, so evaluation works on
//! database indices only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::retrieval::metrics::QueryGt;

/// How a query was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryKind {
    /// An official dataset query (ROxford/RParis: crop to `bbox`).
    Official,
    /// A database image used as a full-image query.
    Derived,
    /// A member of a group of equivalent images (UKBench).
    Group,
}

/// Sizes of a stored image and the factors from the original dataset image.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ImageInfo {
    pub orig_size: [u32; 2],
    pub size: [u32; 2],
    pub scale: [f64; 2],
}

#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub id: String,
    pub image: String,
    /// Index of the query image in the database, if it is one of them.
    pub image_db_index: Option<usize>,
    /// Crop box [x1, y1, x2, y2] in pixels of the stored image.
    pub bbox: Option<[f64; 4]>,
    /// The same box in the original dataset image.
    pub bbox_orig: Option<[f64; 4]>,
    pub kind: QueryKind,
    pub group: Option<String>,
    pub revisitop_query_index: Option<usize>,
    /// Easy, hard and junk images as database indices.
    pub gt: QueryGt,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GroundTruth {
    pub name: String,
    pub source: String,
    /// Image `n` is the file `<image_dir>/<n><image_ext>` next to `gnd.json`.
    pub image_dir: String,
    pub image_ext: String,
    pub db: Vec<String>,
    pub query_images_not_in_db: Vec<String>,
    pub queries: Vec<Query>,
    pub labels: BTreeMap<String, Vec<String>>,
    pub images: Option<BTreeMap<String, ImageInfo>>,
}

#[derive(Deserialize)]
struct RawGroundTruth {
    #[serde(default)]
    name: String,
    #[serde(default)]
    source: String,
    image_dir: String,
    image_ext: String,
    db: Vec<String>,
    #[serde(default)]
    query_images_not_in_db: Vec<String>,
    queries: Vec<RawQuery>,
    #[serde(default)]
    labels: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    images: Option<BTreeMap<String, ImageInfo>>,
}

#[derive(Deserialize)]
struct RawQuery {
    id: String,
    image: String,
    #[serde(default)]
    bbox: Option<[f64; 4]>,
    #[serde(default)]
    bbox_orig: Option<[f64; 4]>,
    #[serde(default)]
    easy: Vec<String>,
    #[serde(default)]
    hard: Vec<String>,
    #[serde(default)]
    junk: Vec<String>,
    protocol: QueryKind,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    revisitop_query_index: Option<usize>,
}

impl GroundTruth {
    pub fn load(path: &Path) -> Result<GroundTruth> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::File {
            path: path.to_path_buf(),
            reason: format!("cannot read the ground truth: {e}"),
        })?;
        GroundTruth::parse(&text).map_err(|reason| Error::File {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses and checks `gnd.json` text; the error is the reason only, for
    /// the caller to attach the file it came from.
    pub fn parse(text: &str) -> std::result::Result<GroundTruth, String> {
        let raw: RawGroundTruth =
            serde_json::from_str(text).map_err(|e| format!("not a valid gnd.json: {e}"))?;
        let mut db_index = HashMap::with_capacity(raw.db.len());
        for (i, name) in raw.db.iter().enumerate() {
            if db_index.insert(name.clone(), i).is_some() {
                return Err(format!("database image '{name}' is listed twice in db"));
            }
        }
        let outside: HashSet<&str> = raw
            .query_images_not_in_db
            .iter()
            .map(String::as_str)
            .collect();
        if let Some(name) = outside.iter().find(|n| db_index.contains_key(**n)) {
            return Err(format!(
                "'{name}' is in query_images_not_in_db but also in db"
            ));
        }
        let mut ids = HashSet::new();
        let mut queries = Vec::with_capacity(raw.queries.len());
        for q in raw.queries {
            if !ids.insert(q.id.clone()) {
                return Err(format!("query id '{}' is used twice", q.id));
            }
            let image_db_index = db_index.get(&q.image).copied();
            if image_db_index.is_none() && !outside.contains(q.image.as_str()) {
                return Err(format!(
                    "query '{}' uses image '{}', which is neither in db nor in query_images_not_in_db",
                    q.id, q.image
                ));
            }
            for (what, b) in [("bbox", &q.bbox), ("bbox_orig", &q.bbox_orig)] {
                if let Some([x1, y1, x2, y2]) = b {
                    if !(x1 <= x2 && y1 <= y2 && [x1, y1, x2, y2].iter().all(|v| v.is_finite())) {
                        return Err(format!(
                            "query '{}': {what} {:?} is not [x1, y1, x2, y2] with x1 <= x2, y1 <= y2",
                            q.id,
                            [x1, y1, x2, y2]
                        ));
                    }
                }
            }
            let resolve = |list: &str, names: &[String]| {
                names
                    .iter()
                    .map(|n| {
                        db_index.get(n).copied().ok_or_else(|| {
                            format!(
                                "query '{}' lists '{n}' as {list}, but it is not in db",
                                q.id
                            )
                        })
                    })
                    .collect::<std::result::Result<Vec<usize>, String>>()
            };
            let gt = QueryGt {
                easy: resolve("easy", &q.easy)?,
                hard: resolve("hard", &q.hard)?,
                junk: resolve("junk", &q.junk)?,
            };
            queries.push(Query {
                id: q.id,
                image: q.image,
                image_db_index,
                bbox: q.bbox,
                bbox_orig: q.bbox_orig,
                kind: q.protocol,
                group: q.group,
                revisitop_query_index: q.revisitop_query_index,
                gt,
            });
        }
        let known = |n: &str| db_index.contains_key(n) || outside.contains(n);
        if let Some(name) = raw.labels.keys().find(|n| !known(n)) {
            return Err(format!("labels name '{name}', which is not a known image"));
        }
        if let Some(name) = raw.images.iter().flat_map(|m| m.keys()).find(|n| !known(n)) {
            return Err(format!(
                "images describes '{name}', which is not a known image"
            ));
        }
        Ok(GroundTruth {
            name: raw.name,
            source: raw.source,
            image_dir: raw.image_dir,
            image_ext: raw.image_ext,
            db: raw.db,
            query_images_not_in_db: raw.query_images_not_in_db,
            queries,
            labels: raw.labels,
            images: raw.images,
        })
    }

    /// File of image `name` for a ground truth stored in `root`.
    pub fn image_path(&self, root: &Path, name: &str) -> PathBuf {
        root.join(&self.image_dir)
            .join(format!("{name}{}", self.image_ext))
    }

    /// Per-query easy/hard/junk sets, in query order, for
    /// `retrieval::metrics::evaluate_revisited`.
    pub fn query_gt(&self) -> Vec<QueryGt> {
        self.queries.iter().map(|q| q.gt.clone()).collect()
    }

    /// UKBench-style groups for `retrieval::metrics::evaluate_groups`: the
    /// query image when it is in the database, plus its easy and hard
    /// images.
    pub fn groups(&self) -> Vec<Vec<usize>> {
        self.queries
            .iter()
            .map(|q| {
                let mut g: Vec<usize> = q.image_db_index.into_iter().collect();
                g.extend(
                    q.gt.easy
                        .iter()
                        .chain(&q.gt.hard)
                        .filter(|&&i| Some(i) != q.image_db_index),
                );
                g
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"{
      "name": "t", "image_dir": "jpg", "image_ext": ".jpg",
      "db": ["a", "b", "c", "d"],
      "query_images_not_in_db": ["q"],
      "queries": [
        {"id": "q0", "image": "q", "bbox": [1, 2, 30.5, 40], "easy": ["a"], "hard": ["b"],
         "junk": ["c"], "protocol": "official", "group": "x", "revisitop_query_index": 3},
        {"id": "q1", "image": "a", "bbox": null, "easy": ["b", "c"], "junk": ["a"],
         "protocol": "group", "group": "g0"}
      ],
      "labels": {"a": ["x"]},
      "images": {"q": {"orig_size": [10, 20], "size": [5, 10], "scale": [0.5, 0.5]}}
    }"#;

    #[test]
    fn parses_and_resolves_names() {
        let g = GroundTruth::parse(SMALL).unwrap();
        assert_eq!(g.db.len(), 4);
        let q0 = &g.queries[0];
        assert_eq!(q0.kind, QueryKind::Official);
        assert_eq!(q0.bbox, Some([1.0, 2.0, 30.5, 40.0]));
        assert_eq!(q0.image_db_index, None);
        assert_eq!(q0.revisitop_query_index, Some(3));
        assert_eq!(
            q0.gt,
            QueryGt {
                easy: vec![0],
                hard: vec![1],
                junk: vec![2]
            }
        );
        assert_eq!(g.queries[1].image_db_index, Some(0));
        assert_eq!(g.groups(), vec![vec![0, 1], vec![0, 1, 2]]);
        assert_eq!(g.db[3], "d");
        assert_eq!(g.images.as_ref().unwrap()["q"].size, [5, 10]);
        assert_eq!(
            g.image_path(Path::new("/data"), "b"),
            PathBuf::from("/data/jpg/b.jpg")
        );
    }

    #[test]
    fn names_what_is_wrong() {
        let cases = [
            (
                SMALL.replace(r#""hard": ["b"]"#, r#""hard": ["zz"]"#),
                "'zz' as hard",
            ),
            (
                SMALL.replace(r#""image": "q""#, r#""image": "nope""#),
                "'nope'",
            ),
            (
                SMALL.replace(r#""c", "d"]"#, r#""c", "c"]"#),
                "'c' is listed twice",
            ),
            (
                SMALL.replace(r#""id": "q1""#, r#""id": "q0""#),
                "'q0' is used twice",
            ),
            (
                SMALL.replace(r#""labels": {"a""#, r#""labels": {"e""#),
                "'e'",
            ),
            (
                SMALL.replace("[1, 2, 30.5, 40]", "[50, 2, 30.5, 40]"),
                "bbox",
            ),
            (
                SMALL.replace("\"group\",", "\"grp\","),
                "not a valid gnd.json",
            ),
            (SMALL.replace(r#""db""#, r#""dbx""#), "missing field `db`"),
            (SMALL[..40].to_string(), "not a valid gnd.json"),
        ];
        for (text, want) in cases {
            let err = GroundTruth::parse(&text).unwrap_err();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn missing_file_is_a_file_error() {
        let path = Path::new("/nonexistent/gnd.json");
        match GroundTruth::load(path) {
            Err(Error::File { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(reason.contains("cannot read"));
            }
            other => panic!("expected a file error, got {other:?}"),
        }
    }
}
