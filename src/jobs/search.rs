//! Retrieval (docs/recipe.md §5): global search as GPU matrix products over database
//! chunks, each query's candidates selected on the device against its current
//! k-th best and merged into its top k on the host, then DELG's re-ranking of the
//! shortlist by local matching and RANSAC, final order by (inliers, global
//! similarity).

use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::exec::{Executable, ParamStore};
use crate::graph::{Graph, TensorId};
use crate::io::features::FeatureSet;
use crate::jobs::local_match::{LocalMatcher, MatchOn};
use crate::ops::gemm::Matmul;
use crate::ops::select::ThresholdCandidates;
use crate::retrieval::matching::{
    binarize, check_threshold, match_binary, select_matches, MatchParams,
};
use crate::retrieval::ransac::{verify, RansacParams};
use crate::tensor::Tensor;

/// One database image in a query's ranking.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub db: usize,
    pub score: f32,
    /// RANSAC inliers (0 when not verified).
    pub inliers: usize,
}

/// Min-heap entry: the worst kept hit on top.
#[derive(PartialEq)]
struct Worst(f32, usize);
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Worst {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Higher score is better; on ties the lower index is better.
        o.0.total_cmp(&self.0).then(self.1.cmp(&o.1))
    }
}

/// Keeps `w` if it beats the worst of the `k` kept.
fn offer(heap: &mut BinaryHeap<Worst>, k: usize, w: Worst) {
    if heap.len() < k {
        heap.push(w);
    } else if heap.peek().is_some_and(|top| w < *top) {
        heap.pop();
        heap.push(w);
    }
}

/// Candidate slots per query and chunk: 4k, at least 64. Once a query holds
/// k hits from `seen` rows, about k·c/seen of the next c random rows beat its
/// k-th best, so after the first chunk about k or fewer do; the margin covers
/// clustered data and the long tail of small k (with k = 3, some query of 64
/// exceeds 12 one time in five), and a chunk where some query has more than
/// its slots is read whole.
fn candidate_slots(k: usize) -> usize {
    (4 * k).max(64)
}

/// The device work for one chunk size.
struct ChunkPlan {
    exe: Executable,
    database: TensorId,
    scores: TensorId,
    /// Present when the chunk is wide enough for selection to pay.
    select: Option<Selection>,
}

struct Selection {
    capacity: usize,
    thresholds: TensorId,
    found: TensorId,
    counts: TensorId,
}

/// Scores queries against database chunks on the device, keeping each
/// query's best `k`. One executable per chunk size, reused across chunks.
pub struct GlobalSearch {
    gpu: Arc<Gpu>,
    queries: Tensor<f32>,
    dim: usize,
    k: usize,
    heaps: Vec<BinaryHeap<Worst>>,
    plans: HashMap<usize, ChunkPlan>,
    /// Whether chunks select candidates on the device (tests turn it off to
    /// compare with reading every score).
    selects: bool,
    /// Chunks merged from their candidates alone.
    selected_chunks: usize,
    seen: usize,
}

impl GlobalSearch {
    /// `queries` is [nq, dim] row-major.
    pub fn new(gpu: &Arc<Gpu>, queries: &[f32], dim: usize, k: usize) -> Result<GlobalSearch> {
        if dim == 0 || !queries.len().is_multiple_of(dim) {
            return Err(Error::shape(
                "search",
                format!("{} query values are not rows of {dim}", queries.len()),
            ));
        }
        let nq = queries.len() / dim;
        Ok(GlobalSearch {
            gpu: gpu.clone(),
            queries: Tensor::new([nq, dim], queries.to_vec())?,
            dim,
            k,
            heaps: (0..nq).map(|_| BinaryHeap::new()).collect(),
            plans: HashMap::new(),
            selects: true,
            selected_chunks: 0,
            seen: 0,
        })
    }

    /// Rows per chunk so that the chunk and the score block each fit one
    /// storage binding with room to spare.
    pub fn chunk_rows(&self) -> usize {
        let max = (self.gpu.max_window_elems() / 2) as usize;
        (max / self.dim).min(max / self.heaps.len().max(1)).max(1)
    }

    /// Scores the next `chunk` of database rows ([c, dim]), numbered after
    /// the rows pushed before.
    pub fn push(&mut self, chunk: &[f32]) -> Result<()> {
        let base = self.seen;
        self.score(chunk, |j| base + j)?;
        self.seen += chunk.len() / self.dim;
        Ok(())
    }

    /// Scores database rows ([c, dim]) whose indices are `indices`, e.g. a
    /// shard's rows in a set ordered by id.
    pub fn push_indexed(&mut self, chunk: &[f32], indices: &[usize]) -> Result<()> {
        if chunk.len() != indices.len() * self.dim {
            return Err(Error::shape(
                "search",
                format!(
                    "database chunk of {} values is not {} rows of {}",
                    chunk.len(),
                    indices.len(),
                    self.dim
                ),
            ));
        }
        self.score(chunk, |j| indices[j])
    }

    fn score(&mut self, chunk: &[f32], index_of: impl Fn(usize) -> usize + Sync) -> Result<()> {
        if !chunk.len().is_multiple_of(self.dim) {
            return Err(Error::shape(
                "search",
                format!(
                    "database chunk of {} values is not rows of {}",
                    chunk.len(),
                    self.dim
                ),
            ));
        }
        let c = chunk.len() / self.dim;
        if c == 0 {
            return Ok(());
        }
        if !self.plans.contains_key(&c) {
            let plan = self.plan(c)?;
            self.plans.insert(c, plan);
        }
        let plan = &self.plans[&c];
        plan.exe
            .set_input(plan.database, &Tensor::new([c, self.dim], chunk.to_vec())?)?;
        let k = self.k;
        // Until every query holds k hits any score can enter, so the whole
        // chunk is read; after that only the candidates, unless a query
        // had more than its slots.
        let select = plan
            .select
            .as_ref()
            .filter(|_| self.selects && self.heaps.iter().all(|h| h.len() >= k));
        if let Some(sel) = select {
            let worst: Vec<f32> = self
                .heaps
                .iter()
                .map(|h| h.peek().map_or(f32::NEG_INFINITY, |w| w.0))
                .collect();
            plan.exe
                .set_input(sel.thresholds, &Tensor::new([worst.len(), 1], worst)?)?;
        }
        plan.exe.run()?;
        if let Some(sel) = select {
            let counts = plan.exe.read(sel.counts)?.data;
            if counts.iter().all(|&n| n as usize <= sel.capacity) {
                let found = plan.exe.read(sel.found)?.data;
                self.heaps
                    .par_iter_mut()
                    .zip(found.par_chunks(2 * sel.capacity))
                    .zip(counts.par_iter())
                    .for_each(|((heap, slots), &n)| {
                        for pair in slots[..2 * n as usize].chunks(2) {
                            offer(heap, k, Worst(pair[0], index_of(pair[1] as usize)));
                        }
                    });
                self.selected_chunks += 1;
                return Ok(());
            }
        }
        let scores = plan.exe.read(plan.scores)?.data;
        self.heaps
            .par_iter_mut()
            .zip(scores.par_chunks(c))
            .for_each(|(heap, row)| {
                for (j, &v) in row.iter().enumerate() {
                    offer(heap, k, Worst(v, index_of(j)));
                }
            });
        Ok(())
    }

    /// The product of the queries with a chunk of `c` rows, and the
    /// selection of its candidates where their slots are at most a quarter
    /// of a row (the read-back then shrinks at least twofold).
    fn plan(&self, c: usize) -> Result<ChunkPlan> {
        let nq = self.heaps.len();
        let mut g = Graph::new();
        let q = g.input("queries", self.queries.shape.clone());
        let database = g.input("database", [c, self.dim]);
        let scores = g.apply1(Matmul::new(false, true), &[q, database])?;
        let capacity = candidate_slots(self.k);
        let select = if self.k > 0 && capacity <= c / 4 {
            let thresholds = g.input("thresholds", [nq, 1]);
            let out = g.apply(ThresholdCandidates { capacity }, &[scores, thresholds])?;
            Some(Selection {
                capacity,
                thresholds,
                found: out[0],
                counts: out[1],
            })
        } else {
            None
        };
        let mut outputs = vec![scores];
        outputs.extend(select.iter().flat_map(|s| [s.found, s.counts]));
        let exe = Executable::new(&self.gpu, &g, &outputs, &ParamStore::default())?;
        exe.set_input(q, &self.queries)?;
        Ok(ChunkPlan {
            exe,
            database,
            scores,
            select,
        })
    }

    /// How many chunks so far were merged from their candidates alone, not
    /// from every score.
    pub fn selected_chunks(&self) -> usize {
        self.selected_chunks
    }

    /// Each query's hits, best first.
    pub fn finish(self) -> Vec<Vec<Hit>> {
        self.heaps
            .into_iter()
            .map(|h| {
                h.into_sorted_vec()
                    .into_iter()
                    .map(|Worst(score, db)| Hit {
                        db,
                        score,
                        inliers: 0,
                    })
                    .collect()
            })
            .collect()
    }
}

/// Global search of every query against a whole in-memory database.
pub fn global_search(
    gpu: &Arc<Gpu>,
    queries: &[f32],
    db: &[f32],
    dim: usize,
    k: usize,
) -> Result<Vec<Vec<Hit>>> {
    let mut s = GlobalSearch::new(gpu, queries, dim, k)?;
    let rows = s.chunk_rows();
    for chunk in db.chunks(rows * dim) {
        s.push(chunk)?;
    }
    Ok(s.finish())
}

/// Re-ranking settings (docs/recipe.md §5 defaults).
#[derive(Clone, Copy, Debug)]
pub struct RerankParams {
    pub shortlist: usize,
    pub matching: MatchParams,
    pub ransac: RansacParams,
    /// Match sign-binarised descriptors by Hamming distance (the threshold in
    /// `matching` is then in bits) instead of float descriptors by L2.
    pub binary: bool,
    /// Where float descriptors find their neighbours.
    pub match_on: MatchOn,
}

impl Default for RerankParams {
    fn default() -> Self {
        RerankParams {
            shortlist: 100,
            matching: MatchParams::default(),
            ransac: RansacParams::default(),
            binary: false,
            match_on: MatchOn::Auto,
        }
    }
}

/// The descriptors and keypoint locations of one image, what re-ranking reads.
pub struct ImageLocals {
    pub descriptors: Vec<f32>,
    pub locations: Vec<f32>,
}

/// Local features of database images by index: a loaded folder, or shard
/// folders read image by image.
pub trait LocalFeatures: Sync {
    fn local_dim(&self) -> usize;
    fn locals(&self, i: usize) -> Result<ImageLocals>;
}

impl LocalFeatures for FeatureSet {
    fn local_dim(&self) -> usize {
        self.local_dim
    }

    fn locals(&self, i: usize) -> Result<ImageLocals> {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        Ok(ImageLocals {
            descriptors: self.descriptors[a * self.local_dim..b * self.local_dim].to_vec(),
            locations: self.locations[a * 2..b * 2].to_vec(),
        })
    }
}

/// Verifies the first `shortlist` hits not in `skip` (the protocol's junk)
/// and orders the whole ranking by (inliers, global score), descending.
/// `matcher` finds float-descriptor neighbours (made once per run from
/// `p.match_on`, so its device plans are reused across queries).
pub fn rerank(
    query: &crate::io::features::ImageFeatures,
    db: &dyn LocalFeatures,
    hits: &[Hit],
    skip: &dyn Fn(usize) -> bool,
    p: &RerankParams,
    matcher: &mut LocalMatcher,
) -> Result<Vec<Hit>> {
    let dim = db.local_dim();
    if dim == 0 {
        return Err(Error::InvalidArgument(
            "the features hold no local descriptors (a global-only model such as DOLG): re-ranking needs DELG features; drop --rerank".into(),
        ));
    }
    check_threshold(&p.matching)?;
    let picked: Vec<usize> = hits
        .iter()
        .enumerate()
        .filter(|(_, h)| !skip(h.db))
        .map(|(i, _)| i)
        .take(p.shortlist)
        .collect();
    // Only the shortlisted images' local features are read.
    let images: Vec<ImageLocals> = picked
        .iter()
        .map(|&i| db.locals(hits[i].db))
        .collect::<Result<_>>()?;
    let matches = if p.binary {
        let qb = binarize(&query.descriptors, dim)?;
        images
            .par_iter()
            .map(|d| {
                match_binary(
                    &qb,
                    &binarize(&d.descriptors, dim)?,
                    dim.div_ceil(8),
                    &p.matching,
                )
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        let views: Vec<&[f32]> = images.iter().map(|d| d.descriptors.as_slice()).collect();
        matcher
            .nearest_two(&query.descriptors, &views, dim)?
            .iter()
            .map(|n| select_matches(n, &p.matching))
            .collect()
    };
    let scores: Vec<Result<usize>> = images
        .par_iter()
        .zip(&matches)
        .map(|(d, m)| Ok(verify(&query.locations, &d.locations, m, &p.ransac)?.score))
        .collect();
    let mut out = hits.to_vec();
    for (&i, s) in picked.iter().zip(scores) {
        out[i].inliers = s?;
    }
    // Stable: unverified hits (0 inliers) keep their global order.
    out.sort_by(|a, b| b.inliers.cmp(&a.inliers).then(b.score.total_cmp(&a.score)));
    Ok(out)
}

/// The database of a search: one feature folder in memory, or a parent
/// folder of shard folders read in place.
pub enum Database {
    Folder(FeatureSet),
    Shards(crate::jobs::sharded::ShardedSet),
}

impl Database {
    pub fn load(dir: &Path) -> Result<Database> {
        use crate::jobs::sharded::ShardedSet;
        Ok(if ShardedSet::is_parent(dir)? {
            Database::Shards(ShardedSet::open(dir)?)
        } else {
            Database::Folder(FeatureSet::load(dir)?)
        })
    }

    pub fn ids(&self) -> &[String] {
        match self {
            Database::Folder(f) => &f.ids,
            Database::Shards(s) => &s.ids,
        }
    }

    pub fn len(&self) -> usize {
        self.ids().len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids().is_empty()
    }

    pub fn locals(&self) -> &dyn LocalFeatures {
        match self {
            Database::Folder(f) => f,
            Database::Shards(s) => s,
        }
    }

    /// The best `k` images for each query ([nq, dim] row-major).
    pub fn global_search(
        &self,
        gpu: &Arc<Gpu>,
        queries: &[f32],
        k: usize,
    ) -> Result<Vec<Vec<Hit>>> {
        match self {
            Database::Folder(f) => global_search(gpu, queries, &f.global, f.global_dim, k),
            Database::Shards(s) => {
                let mut search = GlobalSearch::new(gpu, queries, s.global_dim, k)?;
                s.search_global(&mut search)?;
                Ok(search.finish())
            }
        }
    }

    /// The model and sizes of the features, as a set without data, for
    /// `FeatureSet::check_same_model`.
    fn model_stamp(&self) -> FeatureSet {
        let (model_id, global_dim, local_dim) = match self {
            Database::Folder(f) => (&f.model_id, f.global_dim, f.local_dim),
            Database::Shards(s) => (&s.model_id, s.global_dim, s.local_dim),
        };
        FeatureSet {
            model_id: model_id.clone(),
            global_dim,
            local_dim,
            ..Default::default()
        }
    }
}

/// The query and database feature sets of a search, checked before any
/// device work: both non-empty, from the same model, `out` not a file.
pub struct SearchInputs {
    pub queries: FeatureSet,
    pub db: Database,
}

impl SearchInputs {
    pub fn load(queries: &Path, db: &Path, out: &Path) -> Result<SearchInputs> {
        let q = FeatureSet::load(queries)?;
        let d = Database::load(db)?;
        for (empty, dir) in [(q.is_empty(), queries), (d.is_empty(), db)] {
            if empty {
                return Err(Error::file(
                    dir,
                    "holds no images: its extraction skipped every image (reasons in its errors.txt)",
                ));
            }
        }
        if out.is_file() {
            return Err(Error::file(out, "is a file: --out takes a folder"));
        }
        q.check_same_model(queries, &d.model_stamp(), db)?;
        Ok(SearchInputs { queries: q, db: d })
    }
}

/// How long a search took, for its summary line.
pub struct SearchSummary {
    pub global_seconds: f64,
    pub rerank_seconds: f64,
}

/// Ranks the database for every query (top `k`, re-ranked when `rerank` is
/// given) and writes `out`: ranking.csv, ranks.npy, scores.npy, inliers.npy.
pub fn run_search(
    gpu: &Arc<Gpu>,
    inputs: &SearchInputs,
    k: usize,
    rerank_params: Option<RerankParams>,
    out: &Path,
) -> Result<SearchSummary> {
    let (q, db) = (&inputs.queries, &inputs.db);
    let t = std::time::Instant::now();
    let hits = db.global_search(gpu, &q.global, k.min(db.len()))?;
    let global_seconds = t.elapsed().as_secs_f64();
    let rerank_seconds = rerank_and_write(gpu, inputs, hits, rerank_params, out)?;
    Ok(SearchSummary {
        global_seconds,
        rerank_seconds,
    })
}

/// Re-ranks every query's `hits` (a global search's, or a shortlist from
/// `shortlist::read_shortlist`) when `rerank_params` is given, writes `out`
/// as `run_search` does and returns the seconds re-ranking took.
pub fn rerank_and_write(
    gpu: &Arc<Gpu>,
    inputs: &SearchInputs,
    mut hits: Vec<Vec<Hit>>,
    rerank_params: Option<RerankParams>,
    out: &Path,
) -> Result<f64> {
    let (q, db) = (&inputs.queries, &inputs.db);
    let t = std::time::Instant::now();
    if let Some(p) = rerank_params {
        let mut matcher = LocalMatcher::new(gpu, p.match_on);
        for (i, h) in hits.iter_mut().enumerate() {
            *h = rerank(&q.image(i), db.locals(), h, &|_| false, &p, &mut matcher)?;
        }
    }
    let rerank_seconds = t.elapsed().as_secs_f64();
    // Every query has as many hits: the global top-k, or a checked shortlist.
    let k = hits.first().map_or(0, Vec::len);
    write_results(out, q, db.ids(), &hits, k)?;
    Ok(rerank_seconds)
}

/// Writes the `k` hits of every query into the folder `out`: ranking.csv
/// (ids, rank, score, inliers) and the same as [queries, k] arrays in
/// ranks.npy (database indices), scores.npy and inliers.npy.
pub fn write_results(
    out: &Path,
    q: &FeatureSet,
    db_ids: &[String],
    hits: &[Vec<Hit>],
    k: usize,
) -> Result<()> {
    use crate::io::npy;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut csv = String::from("query,db,rank,global_score,inliers\n");
    let (mut ranks, mut scores, mut inliers) = (Vec::new(), Vec::new(), Vec::new());
    for (qi, h) in hits.iter().enumerate() {
        for (r, x) in h.iter().enumerate() {
            csv.push_str(&format!(
                "{},{},{},{},{}\n",
                q.ids[qi],
                db_ids[x.db],
                r + 1,
                x.score,
                x.inliers
            ));
            ranks.push(x.db as i64);
            scores.push(x.score);
            inliers.push(x.inliers as i64);
        }
    }
    npy::write_atomic(&out.join("ranking.csv"), csv.as_bytes())?;
    npy::write(&out.join("ranks.npy"), &[q.len(), k], &ranks)?;
    npy::write(&out.join("scores.npy"), &[q.len(), k], &scores)?;
    npy::write(&out.join("inliers.npy"), &[q.len(), k], &inliers)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::bench::random_unit_rows;
    use crate::tensor::Rng;
    use crate::testing::test_gpus;

    /// The hits, and how many chunks were merged from candidates alone.
    fn search(
        gpu: &Arc<Gpu>,
        q: &[f32],
        db: &[f32],
        dim: usize,
        k: usize,
        chunk: usize,
        selects: bool,
    ) -> (Vec<Vec<Hit>>, usize) {
        let mut s = GlobalSearch::new(gpu, q, dim, k).unwrap();
        s.selects = selects;
        for part in db.chunks(chunk * dim) {
            s.push(part).unwrap();
        }
        let selected = s.selected_chunks();
        (s.finish(), selected)
    }

    /// Selecting candidates on the device gives exactly the hits of reading
    /// every score: with ties (duplicated rows inside and across chunks), a
    /// last chunk too narrow to select, and a cluster of rows near one query
    /// that overflows its slots (that chunk is read whole).
    #[test]
    fn device_selection_equals_reading_every_score() {
        let (nq, dim, k, chunk) = (37, 24, 5, 300);
        let mut rng = Rng::new(11);
        let q = random_unit_rows(&mut rng, nq, dim);
        let mut db = random_unit_rows(&mut rng, 1650, dim);
        // Rows 280..320 repeat row 3: exact ties, across the first chunk boundary.
        for r in 280..320 {
            db.copy_within(3 * dim..4 * dim, r * dim);
        }
        // Rows 900..1000, in the fourth chunk: query 0 with a little noise,
        // 100 candidates for its 64 slots.
        for r in 900..1000 {
            for d in 0..dim {
                db[r * dim + d] = q[d] + 0.01 * rng.range(-1.0, 1.0) as f32;
            }
            crate::jobs::extract::l2_normalize(&mut db[r * dim..(r + 1) * dim]);
        }
        for gpu in test_gpus() {
            let (want, whole) = search(gpu, &q, &db, dim, k, chunk, false);
            let (got, selected) = search(gpu, &q, &db, dim, k, chunk, true);
            assert_eq!(got, want, "{}", gpu.tuning.describe());
            assert!(want.iter().all(|h| h.len() == k));
            // Chunks 1, 2 and 4 selected; 0 (queries not yet full), 3 (the
            // cluster) and the last (150 rows: 64 slots are over a quarter)
            // read whole.
            assert_eq!((whole, selected), (0, 3), "{}", gpu.tuning.describe());
        }
    }

    /// The selection path really runs: every chunk after the first is
    /// merged from its candidates (random data: about k of them per query).
    #[test]
    fn later_chunks_merge_only_candidates() {
        let (nq, dim, k) = (64, 16, 3);
        let mut rng = Rng::new(5);
        let q = random_unit_rows(&mut rng, nq, dim);
        let db = random_unit_rows(&mut rng, 4096, dim);
        for gpu in test_gpus() {
            let (_, selected) = search(gpu, &q, &db, dim, k, 512, true);
            assert_eq!(selected, 7, "{}", gpu.tuning.describe());
        }
    }
}
