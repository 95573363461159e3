//! `delg-gpu eval`: scores retrieval on a ground truth in the `gnd.json`
//! form, globally and after DELG re-ranking, side by side, with the time of
//! each stage. Revisited Oxford/Paris-style queries get Easy/Medium/Hard
//! mAP and mP@k (docs/recipe.md §7.1), re-ranked once per protocol with that
//! protocol's junk skipped in the shortlist; UKBench-style groups get the
//! N-S score, recall@4 and mAP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::features::{FeatureSet, ImageFeatures};
use crate::io::groundtruth::{GroundTruth, QueryKind};
use crate::jobs::extract::{run_extract, ExtractConfig, ExtractJob};
use crate::jobs::local_match::LocalMatcher;
use crate::jobs::search::{global_search, rerank, Hit, RerankParams};
use crate::retrieval::metrics::{
    evaluate_groups, evaluate_rankings, Protocol, GROUP_KS, REVISITOP_KS,
};

pub struct EvalJob {
    pub gnd: PathBuf,
    /// Extract with these weights into `work/db` and `work/queries`...
    pub weights: Option<PathBuf>,
    /// ...or use feature folders written by `extract`.
    pub db_features: Option<PathBuf>,
    pub query_features: Option<PathBuf>,
    pub work: PathBuf,
    pub extract: ExtractConfig,
    pub rerank: Option<RerankParams>,
}

/// One row of the report: a protocol's metrics before and after re-ranking.
#[derive(Clone, Debug, Serialize)]
pub struct EvalRow {
    pub protocol: String,
    pub queries: usize,
    pub global_map: Option<f64>,
    pub global_precision: Option<Vec<f64>>,
    /// The k of each mean precision value (mP@k).
    pub precision_ks: Vec<usize>,
    pub reranked_map: Option<f64>,
    pub reranked_precision: Option<Vec<f64>>,
    /// UKBench's N-S score (groups only).
    pub global_ns: Option<f64>,
    pub reranked_ns: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub name: String,
    pub rows: Vec<EvalRow>,
    pub seconds_extract: f64,
    pub seconds_global: f64,
    pub seconds_rerank: f64,
}

/// The feature row of every database name, by file stem of the stored ids.
fn rows_by_name(ids: &[String], names: &[String], what: &Path) -> Result<Vec<usize>> {
    let by_stem: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                Path::new(id)
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or(id),
                i,
            )
        })
        .collect();
    names
        .iter()
        .map(|n| {
            by_stem.get(n.as_str()).copied().ok_or_else(|| Error::File {
                path: what.to_path_buf(),
                reason: format!("has no features for '{n}', which the ground truth names; extract that image too"),
            })
        })
        .collect()
}

/// The features of the images `names`, in that order, from a feature
/// folder or from a parent of shard folders, read in place (only the named
/// images' rows are read).
fn features_of(dir: &Path, names: &[String]) -> Result<FeatureSet> {
    use crate::jobs::sharded::ShardedSet;
    let (images, global_dim, local_dim, model_id) = if ShardedSet::is_parent(dir)? {
        let set = ShardedSet::open(dir)?;
        let rows = rows_by_name(&set.ids, names, dir)?;
        let images = rows
            .iter()
            .map(|&r| set.image(r))
            .collect::<Result<Vec<_>>>()?;
        (images, set.global_dim, set.local_dim, set.model_id)
    } else {
        let set = FeatureSet::load(dir)?;
        let rows = rows_by_name(&set.ids, names, dir)?;
        let images = rows.iter().map(|&r| set.image(r)).collect();
        (images, set.global_dim, set.local_dim, set.model_id)
    };
    let mut set = as_set(&images, global_dim, local_dim);
    set.model_id = model_id;
    Ok(set)
}

fn as_set(images: &[ImageFeatures], global_dim: usize, local_dim: usize) -> FeatureSet {
    let mut s = FeatureSet {
        global_dim,
        local_dim,
        offsets: vec![0],
        ..Default::default()
    };
    for f in images {
        s.ids.push(f.id.clone());
        s.global.extend_from_slice(&f.global);
        s.descriptors.extend_from_slice(&f.descriptors);
        s.locations.extend_from_slice(&f.locations);
        s.scales.extend_from_slice(&f.scales);
        s.attention.extend_from_slice(&f.attention);
        s.offsets.push(s.scales.len() as i64);
    }
    s
}

pub fn run_eval(gpu: &Arc<Gpu>, job: &EvalJob) -> Result<EvalReport> {
    let gt = GroundTruth::load(&job.gnd)?;
    // Checked before any extraction, which would otherwise run for nothing.
    if gt.queries.is_empty() || gt.db.is_empty() {
        return Err(Error::file(
            &job.gnd,
            format!(
                "lists {} queries and {} database images: eval needs both",
                gt.queries.len(),
                gt.db.len()
            ),
        ));
    }
    let root = job.gnd.parent().unwrap_or(Path::new(".")).to_path_buf();
    let rel = |name: &str| format!("{}/{name}{}", gt.image_dir, gt.image_ext);
    let t0 = Instant::now();

    // Database features in ground-truth order.
    let db_dir = match (&job.db_features, &job.weights) {
        (Some(d), _) => d.clone(),
        (None, Some(w)) => {
            let out = job.work.join("db");
            let only = gt.db.iter().map(|n| rel(n)).collect();
            let ej = ExtractJob {
                input: root.clone(),
                out: out.clone(),
                weights: w.clone(),
                config: job.extract.clone(),
                shard: None,
                only: Some(only),
                crops: HashMap::new(),
                quiet: false,
                batch: None,
            };
            run_extract(gpu, &ej)?;
            out
        }
        (None, None) => {
            return Err(Error::InvalidArgument(
                "give --weights to extract, or --db-features".into(),
            ))
        }
    };
    let db = features_of(&db_dir, &gt.db)?;

    // Queries: database rows for full-image queries of database images,
    // cropped extractions for the others.
    let needs_crop =
        |q: &crate::io::groundtruth::Query| q.bbox.is_some() || q.image_db_index.is_none();
    let cropped: Vec<&crate::io::groundtruth::Query> =
        gt.queries.iter().filter(|q| needs_crop(q)).collect();
    let query_set = if cropped.is_empty() {
        None
    } else {
        let dir = match (&job.query_features, &job.weights) {
            (Some(d), _) => d.clone(),
            (None, Some(w)) => {
                let out = job.work.join("queries");
                let mut crops = HashMap::new();
                for q in &cropped {
                    if let Some(b) = q.bbox {
                        if crops.insert(rel(&q.image), b).is_some_and(|prev| prev != b) {
                            return Err(Error::unsupported(
                                "eval",
                                format!("image '{}' is a query with two different boxes", q.image),
                            ));
                        }
                    }
                }
                let only: Vec<String> = crops
                    .keys()
                    .cloned()
                    .chain(
                        cropped
                            .iter()
                            .filter(|q| q.bbox.is_none())
                            .map(|q| rel(&q.image)),
                    )
                    .collect();
                let ej = ExtractJob {
                    input: root.clone(),
                    out: out.clone(),
                    weights: w.clone(),
                    config: job.extract.clone(),
                    shard: None,
                    only: Some(only),
                    crops,
                    quiet: false,
                    batch: None,
                };
                run_extract(gpu, &ej)?;
                out
            }
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "this ground truth has cropped queries: give --weights or --query-features"
                        .into(),
                ))
            }
        };
        let set = FeatureSet::load(&dir)?;
        set.check_same_model(&dir, &db, &db_dir)?;
        Some((set, dir))
    };
    let mut queries = Vec::new();
    for q in &gt.queries {
        let f = match (&query_set, needs_crop(q), q.image_db_index) {
            (Some((set, dir)), true, _) => {
                set.image(rows_by_name(&set.ids, std::slice::from_ref(&q.image), dir)?[0])
            }
            (_, false, Some(i)) => db.image(i),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "query '{}' has no features",
                    q.id
                )))
            }
        };
        if f.global.len() != db.global_dim
            || (f.num_local() > 0 && f.descriptors.len() / f.num_local() != db.local_dim)
        {
            return Err(Error::InvalidArgument(format!(
                "query '{}' features have other sizes than the database's: different models?",
                q.id
            )));
        }
        queries.push(f);
    }
    let seconds_extract = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let qg: Vec<f32> = queries
        .iter()
        .flat_map(|f| f.global.iter().copied())
        .collect();
    let hits = global_search(gpu, &qg, &db.global, db.global_dim, db.len())?;
    let seconds_global = t1.elapsed().as_secs_f64();
    let ranking = |h: &[Vec<Hit>]| -> Vec<Vec<usize>> {
        h.iter().map(|r| r.iter().map(|x| x.db).collect()).collect()
    };

    let t2 = Instant::now();
    let groups_only = gt.queries.iter().all(|q| q.kind == QueryKind::Group);
    let mut rows = Vec::new();
    let rerun = |skip_of: &dyn Fn(usize) -> Vec<usize>| -> Result<Option<Vec<Vec<Hit>>>> {
        let Some(p) = &job.rerank else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let mut matcher = LocalMatcher::new(gpu, p.match_on);
        for (qi, (q, h)) in queries.iter().zip(&hits).enumerate() {
            let junk: std::collections::HashSet<usize> = skip_of(qi).into_iter().collect();
            out.push(rerank(q, &db, h, &|i| junk.contains(&i), p, &mut matcher)?);
        }
        Ok(Some(out))
    };
    if groups_only {
        let groups = gt.groups();
        let g = evaluate_groups(&ranking(&hits), &groups, db.len())?;
        let r = rerun(&|_| Vec::new())?
            .map(|h| evaluate_groups(&ranking(&h), &groups, db.len()))
            .transpose()?;
        rows.push(EvalRow {
            protocol: "groups".into(),
            queries: groups.len(),
            global_map: g.ranking.map,
            global_precision: g.ranking.mean_precision.clone(),
            precision_ks: GROUP_KS.to_vec(),
            reranked_map: r.as_ref().and_then(|r| r.ranking.map),
            reranked_precision: r.as_ref().and_then(|r| r.ranking.mean_precision.clone()),
            global_ns: Some(g.ns_score),
            reranked_ns: r.map(|r| r.ns_score),
        });
    } else {
        let gts = gt.query_gt();
        for p in Protocol::ALL {
            let rel: Vec<_> = gts.iter().map(|g| g.relevance(p)).collect();
            let g = evaluate_rankings(&ranking(&hits), &rel, db.len(), &REVISITOP_KS)?;
            let r = rerun(&|qi| rel[qi].junk.clone())?
                .map(|h| evaluate_rankings(&ranking(&h), &rel, db.len(), &REVISITOP_KS))
                .transpose()?;
            rows.push(EvalRow {
                protocol: p.name().into(),
                queries: g.n_valid(),
                global_map: g.map,
                global_precision: g.mean_precision.clone(),
                precision_ks: REVISITOP_KS.to_vec(),
                reranked_map: r.as_ref().and_then(|r| r.map),
                reranked_precision: r.and_then(|r| r.mean_precision),
                global_ns: None,
                reranked_ns: None,
            });
        }
    }
    Ok(EvalReport {
        name: gt.name.clone(),
        rows,
        seconds_extract,
        seconds_global,
        seconds_rerank: t2.elapsed().as_secs_f64(),
    })
}

/// What the report's columns mean, in percent where they are percentages.
fn metrics_legend(ks: &str, groups: bool) -> String {
    let mut legend = format!(
        "mAP: mean average precision; mP@{ks}: mean precision at ranks {} \
         (revisitop's rule: k shrinks to the rank of the last positive when \
         every positive comes before k)",
        ks.replace('/', ", ")
    );
    if groups {
        legend.push_str(
            "; N-S: UKBench's score, the mean number of a query's group (itself \
             included) among its first 4 results, 4 at best",
        );
    }
    legend + "; rr: after re-ranking"
}

pub fn print_report(r: &EvalReport) {
    let pct = |v: Option<f64>| {
        v.map(|v| format!("{:.2}", v * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    let ps = |v: &Option<Vec<f64>>| {
        v.as_ref()
            .map(|v| {
                v.iter()
                    .map(|x| format!("{:.1}", x * 100.0))
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_else(|| "-".into())
    };
    // Every row of a report has the same ks: revisitop's or the groups'.
    let ks = r.rows.first().map_or(&[][..], |row| &row.precision_ks[..]);
    let at = ks
        .iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join("/");
    println!("{}", r.name);
    println!(
        "{:<8} {:>7} {:>10} {:>16} {:>10} {:>16} {:>8} {:>8}",
        "protocol",
        "queries",
        "global mAP",
        format!("global mP@{at}"),
        "rerank mAP",
        format!("rerank mP@{at}"),
        "N-S",
        "N-S rr"
    );
    for row in &r.rows {
        println!(
            "{:<8} {:>7} {:>10} {:>16} {:>10} {:>16} {:>8} {:>8}",
            row.protocol,
            row.queries,
            pct(row.global_map),
            ps(&row.global_precision),
            pct(row.reranked_map),
            ps(&row.reranked_precision),
            row.global_ns
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "-".into()),
            row.reranked_ns
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    println!(
        "{}",
        metrics_legend(&at, r.rows.iter().any(|row| row.global_ns.is_some()))
    );
    println!(
        "time: extraction {:.1} s, global search {:.3} s, re-ranking {:.2} s",
        r.seconds_extract, r.seconds_global, r.seconds_rerank
    );
}

/// The two tasks of the Google Landmarks v2 challenges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gldv2Task {
    Recognition,
    Retrieval,
}

/// One split's scores; a metric is `None` when the split has no query it
/// can be computed on (e.g. a solution with no Private rows).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Gldv2SplitScores {
    pub split: &'static str,
    pub queries: usize,
    pub predictions: usize,
    /// Recognition: GAP (μAP) with out-of-domain predictions counted wrong...
    pub gap: Option<f64>,
    /// ...and with them dropped.
    pub gap_landmark_queries_only: Option<f64>,
    pub top1_accuracy: Option<f64>,
    /// Retrieval: mAP@100.
    pub map_at_100: Option<f64>,
}

/// Scores a GLDv2 prediction CSV against its solution CSV as the challenge
/// (and delf's `compute_*_metrics.py`) does, for the Public and Private splits.
pub fn score_gldv2(
    task: Gldv2Task,
    solution: &Path,
    predictions: &Path,
) -> Result<Vec<Gldv2SplitScores>> {
    use crate::io::gldv2;
    use crate::retrieval::metrics::{recognition_gap, recognition_top1_accuracy, retrieval_map_at};
    let computable = |r: Result<f64>| match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::InvalidArgument(_)) => Ok(None),
        Err(e) => Err(e),
    };
    let mut scores = Vec::new();
    match task {
        Gldv2Task::Recognition => {
            let sol = gldv2::read_recognition_solution(solution)?;
            let pred = gldv2::read_recognition_predictions(predictions, &sol)?;
            for (split, s, p) in sol.splits(&pred) {
                scores.push(Gldv2SplitScores {
                    split,
                    queries: s.len(),
                    predictions: p.len(),
                    gap: computable(recognition_gap(p.values(), s, false))?,
                    gap_landmark_queries_only: computable(recognition_gap(p.values(), s, true))?,
                    top1_accuracy: computable(recognition_top1_accuracy(p, s))?,
                    map_at_100: None,
                });
            }
        }
        Gldv2Task::Retrieval => {
            let sol = gldv2::read_retrieval_solution(solution)?;
            let pred = gldv2::read_retrieval_predictions(predictions, &sol)?;
            for (split, s, p) in sol.splits(&pred) {
                scores.push(Gldv2SplitScores {
                    split,
                    queries: s.len(),
                    predictions: p.len(),
                    map_at_100: computable(retrieval_map_at(p, s, 100))?,
                    ..Default::default()
                });
            }
        }
    }
    Ok(scores)
}
