//! The library's entry points, re-exported at the crate root: a [`Model`]
//! with its extraction recipe, an [`Extractor`] that turns images into
//! [`Features`], feature folders ([`write_features`], [`FeatureSet`]),
//! global search with optional re-ranking ([`search`], [`search_reranked`])
//! and pair matching with RANSAC ([`match_features`]).
//!
//! These are thin layers over the machinery the command line uses, so the
//! library and `delg-gpu extract` give the same numbers for the same images.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::features::{write_feature_set, FeatureSet, ImageFeatures};
use crate::io::weights::WeightFile;
use crate::jobs::extract::{
    prepare_image, prepare_rgb, run_extract_with, ExtractConfig, ExtractJob, ExtractSummary,
    Extracted, PreparedImage,
};
use crate::jobs::local_match::LocalMatcher;
use crate::jobs::pair::PairMatch;
use crate::jobs::search::{global_search, rerank, Hit, RerankParams};
use crate::model::ModelConfig;
use crate::retrieval::matching::{match_descriptors, MatchParams};
use crate::retrieval::ransac::{verify, RansacParams, Transform};

/// Everything extracted from one image: the L2-normalised global descriptor
/// and the selected local features (descriptors `[n, d]` row-major,
/// locations `[n, 2]` as (y, x) in original-image pixels, scales, attention).
pub type Features = ImageFeatures;

/// A weight file and the extraction recipe to run it with.
///
/// ```
/// use delg_gpu::Model;
/// # fn main() -> delg_gpu::Result<()> {
/// let dir = std::env::temp_dir().join(format!("delg-doc-model-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("tiny.safetensors");
/// Model::tiny_random(1)?.save(&path)?;
///
/// let mut model = Model::load(&path)?;
/// assert_eq!((model.arch(), model.local_dim()), ("delg", 16));
/// model.recipe.max_features = 100; // at most 100 keypoints per image
///
/// // A bad file is one error naming it.
/// let missing = dir.join("missing.safetensors");
/// let err = Model::load(&missing).err().unwrap();
/// assert!(err.to_string().contains("missing.safetensors"));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
pub struct Model {
    file: WeightFile,
    path: PathBuf,
    config: ModelConfig,
    /// Image pyramid, feature selection and preprocessing; starts as the
    /// published recipe of the model's architecture (docs/recipe.md) and
    /// may be changed before making an [`Extractor`].
    pub recipe: ExtractConfig,
}

impl Model {
    /// Loads a safetensors weight file written by `delg-gpu init-weights`,
    /// `train` or `import-weights`; the architecture comes from its metadata.
    pub fn load(path: &Path) -> Result<Model> {
        Self::from_file(WeightFile::load(path)?, path.to_path_buf())
    }

    /// A tiny DELG model with random weights (seeded): its features mean
    /// nothing, but it runs in moments, which is what examples and tests
    /// need. Real retrieval needs trained weights (docs/weights.md).
    pub fn tiny_random(seed: u64) -> Result<Model> {
        let config = crate::cli::ModelArgs::tiny_delg().model_config()?;
        let file = config.random_weights(seed, 0.0)?;
        Self::from_file(
            file,
            PathBuf::from(format!("<tiny random model, seed {seed}>")),
        )
    }

    fn from_file(file: WeightFile, path: PathBuf) -> Result<Model> {
        let config = ModelConfig::from_metadata(&file.metadata, &path)?;
        let recipe = ExtractConfig::for_arch(config.arch());
        Ok(Model {
            file,
            path,
            config,
            recipe,
        })
    }

    /// "delg" or "dolg".
    pub fn arch(&self) -> &'static str {
        self.config.arch()
    }

    /// Size of the local descriptors (0: a global-only model such as DOLG).
    pub fn local_dim(&self) -> usize {
        self.config.local_dim()
    }

    /// Writes the weights as a safetensors file `Model::load` reads back.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.file.save(path)
    }
}

/// Runs a [`Model`] on the device, one image at a time. Plans for repeated
/// image sizes are cached, so a collection of similar images runs faster
/// than its first image.
///
/// ```
/// use delg_gpu::{image_files, Extractor, Gpu, GpuOptions, Model};
/// # fn main() -> delg_gpu::Result<()> {
/// let dir = std::env::temp_dir().join(format!("delg-doc-extract-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// for scene in 0..2 {
///     let image = delg_gpu::render_scene(scene, 0, 96);
///     image.save(dir.join(format!("scene{scene}.png"))).unwrap();
/// }
///
/// let gpu = Gpu::new(&GpuOptions::default())?;
/// let mut model = Model::tiny_random(3)?;
/// model.recipe.max_features = 50;
/// let mut extractor = Extractor::new(&gpu, &model)?;
/// let files = image_files(&dir)?;
/// let features = extractor.extract_files(&files)?;
/// assert_eq!(features[1].id, dir.join("scene1.png").display().to_string());
/// for f in &features {
///     assert!(f.num_local() <= 50);
///     assert_eq!(f.descriptors.len(), f.num_local() * model.local_dim());
///     assert_eq!((f.scales.len(), f.attention.len()), (f.num_local(), f.num_local()));
/// }
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
pub struct Extractor {
    inner: crate::jobs::extract::Extractor,
    /// The model's weight file, recorded in the folders `extract_folder` writes.
    weights: PathBuf,
}

impl Extractor {
    pub fn new(gpu: &Arc<Gpu>, model: &Model) -> Result<Extractor> {
        let inner = crate::jobs::extract::Extractor::from_weights(
            gpu,
            &model.file,
            &model.path,
            model.recipe.clone(),
        )?;
        Ok(Extractor {
            inner,
            weights: model.path.clone(),
        })
    }

    /// Features of an image in memory (its `id` is empty).
    pub fn extract(&mut self, image: &RgbImage) -> Result<Features> {
        let prepared = prepare_rgb(Path::new("<image in memory>"), image, &self.inner.extract)?;
        self.run(String::new(), &prepared)
    }

    /// Features of an image file (JPEG, PNG, WebP, BMP, TIFF or GIF); its
    /// `id` is the path as given.
    pub fn extract_file(&mut self, path: &Path) -> Result<Features> {
        let prepared = prepare_image(path, &self.inner.extract, None)?;
        self.run(path.display().to_string(), &prepared)
    }

    /// Features of many files, in order; stops at the first unreadable one.
    /// (`delg-gpu extract` skips and reports bad files, and resumes.)
    pub fn extract_files<P: AsRef<Path>>(&mut self, paths: &[P]) -> Result<Vec<Features>> {
        paths
            .iter()
            .map(|p| self.extract_file(p.as_ref()))
            .collect()
    }

    /// Extracts the images below `input` into the feature folder `out`
    /// exactly as `delg-gpu extract input --out out` does with this model
    /// and recipe: same files, same resuming from an interrupted run, bad
    /// images skipped and listed in `out/errors.txt` (an error only when
    /// none could be extracted). `bar` shows the command's progress bar on
    /// stderr; `on_image(processed, pending)` is called after each image,
    /// and an error it returns stops the run (a rerun resumes).
    ///
    /// ```
    /// use delg_gpu::{Extractor, FeatureFiles, Gpu, GpuOptions, Model};
    /// # fn main() -> delg_gpu::Result<()> {
    /// let dir = std::env::temp_dir().join(format!("delg-doc-folder-{}", std::process::id()));
    /// let (images, out) = (dir.join("images"), dir.join("features"));
    /// std::fs::create_dir_all(&images).unwrap();
    /// for scene in 0..3 {
    ///     let image = delg_gpu::render_scene(scene, 0, 96);
    ///     image.save(images.join(format!("scene{scene}.png"))).unwrap();
    /// }
    /// std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    ///
    /// let gpu = Gpu::new(&GpuOptions::default())?;
    /// let mut extractor = Extractor::new(&gpu, &Model::tiny_random(2)?)?;
    /// let mut seen = Vec::new();
    /// let summary = extractor.extract_folder(&images, &out, false, &mut |done, pending| {
    ///     seen.push((done, pending));
    ///     Ok(())
    /// })?;
    /// assert_eq!((summary.extracted_now, summary.failed), (3, 1));
    /// assert_eq!(seen.last(), Some(&(4, 4)));
    ///
    /// // The folder's files, checked but not read.
    /// let files = FeatureFiles::open(&out)?;
    /// assert_eq!(files.ids, ["scene0.png", "scene1.png", "scene2.png"]);
    /// assert_eq!(files.global.shape, [3, files.global_dim()]);
    /// assert_eq!(files.local_range(2).end, files.num_local());
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok(())
    /// # }
    /// ```
    pub fn extract_folder(
        &mut self,
        input: &Path,
        out: &Path,
        bar: bool,
        on_image: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<ExtractSummary> {
        let job = ExtractJob {
            input: input.to_path_buf(),
            out: out.to_path_buf(),
            weights: self.weights.clone(),
            config: self.inner.extract.clone(),
            shard: None,
            only: None,
            crops: Default::default(),
            quiet: !bar,
            batch: None,
        };
        run_extract_with(&mut self.inner, &job, on_image)
    }

    fn run(&mut self, id: String, prepared: &PreparedImage) -> Result<Features> {
        let Extracted { global, local } = self.inner.extract(prepared)?;
        Ok(Features {
            id,
            global,
            descriptors: local.descriptors,
            locations: local.locations,
            scales: local.scales,
            attention: local.attention,
        })
    }
}

/// The image files below `dir` (recursively, sorted), as `delg-gpu extract`
/// finds them; an entry that cannot be listed is an error naming it.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let found = crate::jobs::collection::discover(dir, &indicatif::ProgressBar::hidden())?;
    if let Some((path, reason)) = found.problems.first() {
        return Err(Error::InvalidArgument(format!(
            "{path}: {reason} ({} unreadable entries under {}; fix or remove them)",
            found.problems.len(),
            dir.display()
        )));
    }
    Ok(found.images.iter().map(|rel| dir.join(rel)).collect())
}

/// Writes `images` as a feature folder (the layout `delg-gpu extract`
/// writes and `FeatureSet::load`, numpy and FAISS read; ids are the
/// images' `id`s and must not contain line breaks).
pub fn write_features(dir: &Path, images: &[Features]) -> Result<()> {
    let Some(first) = images.first() else {
        return Err(Error::InvalidArgument(format!(
            "no images to write to {}: pass at least one",
            dir.display()
        )));
    };
    let local_dim = images
        .iter()
        .map(local_dim_of)
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_feature_set(dir, images, first.global.len(), local_dim, false)
}

/// The local descriptor size of `f`, `None` without local features.
fn local_dim_of(f: &Features) -> Result<Option<usize>> {
    let n = f.num_local();
    if n == 0 {
        return Ok(None);
    }
    if !f.descriptors.len().is_multiple_of(n) || f.locations.len() != 2 * n {
        return Err(Error::InvalidArgument(format!(
            "image '{}' holds {} descriptor values and {} location values for {n} keypoints: \
             not [n, d] and [n, 2]",
            f.id,
            f.descriptors.len(),
            f.locations.len()
        )));
    }
    Ok(Some(f.descriptors.len() / n))
}

/// For each query image, the `k` database images with the most similar
/// global descriptors (cosine similarity, best first), scored on the device.
pub fn search(
    gpu: &Arc<Gpu>,
    queries: &FeatureSet,
    db: &FeatureSet,
    k: usize,
) -> Result<Vec<Vec<Hit>>> {
    for (set, what) in [(queries, "queries"), (db, "database")] {
        if set.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the {what} hold no images: search needs at least one"
            )));
        }
    }
    same_size("global", queries.global_dim, db.global_dim)?;
    search_global(gpu, &queries.global, &db.global, db.global_dim, k)
}

/// [`search`] on bare global descriptors: `queries` [nq, dim] and `db`
/// [n, dim], row-major (e.g. the rows of memory-mapped `global.npy` files).
///
/// ```
/// # fn main() -> delg_gpu::Result<()> {
/// let gpu = delg_gpu::Gpu::new(&delg_gpu::GpuOptions::default())?;
/// let db = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8]; // three 2-d descriptors
/// let hits = delg_gpu::search_global(&gpu, &[0.0, 1.0], &db, 2, 2)?;
/// assert_eq!((hits[0][0].db, hits[0][1].db), (1, 2));
/// assert!(delg_gpu::search_global(&gpu, &[0.0, 1.0, 0.0], &db, 2, 2).is_err());
/// # Ok(())
/// # }
/// ```
pub fn search_global(
    gpu: &Arc<Gpu>,
    queries: &[f32],
    db: &[f32],
    dim: usize,
    k: usize,
) -> Result<Vec<Vec<Hit>>> {
    if dim == 0 {
        return Err(Error::InvalidArgument(
            "global descriptors of size 0: pass [n, d] arrays with d > 0".into(),
        ));
    }
    for (values, what) in [(queries, "queries"), (db, "database")] {
        if values.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the {what} hold no images: search needs at least one"
            )));
        }
        if !values.len().is_multiple_of(dim) {
            return Err(Error::InvalidArgument(format!(
                "the {what} hold {} values, not rows of {dim}",
                values.len()
            )));
        }
    }
    global_search(gpu, queries, db, dim, k)
}

/// Errors unless queries and database descriptors (`what`: global or
/// local) have one size, as features of one model do.
fn same_size(what: &str, queries: usize, db: usize) -> Result<()> {
    if queries == db {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "the queries hold {queries}-d {what} descriptors but the database {db}-d: \
         extract both with the same model"
    )))
}

/// [`search`], then DELG's re-ranking: the first `params.shortlist` hits of
/// each query are verified by local matching and RANSAC and the ranking is
/// ordered by (inliers, global score).
///
/// ```
/// use delg_gpu::{search_reranked, write_features, Extractor, FeatureSet, Gpu, GpuOptions, Model, RerankParams};
/// # fn main() -> delg_gpu::Result<()> {
/// let gpu = Gpu::new(&GpuOptions::default())?;
/// let mut extractor = Extractor::new(&gpu, &Model::tiny_random(5)?)?;
/// let mut db = Vec::new();
/// for scene in 0..3 {
///     let mut f = extractor.extract(&delg_gpu::render_scene(scene, 0, 96))?;
///     f.id = format!("scene{scene}");
///     db.push(f);
/// }
/// let dir = std::env::temp_dir().join(format!("delg-doc-rerank-{}", std::process::id()));
/// write_features(&dir, &db)?;
/// let set = FeatureSet::load(&dir)?;
///
/// let rankings = search_reranked(&gpu, &set, &set, 3, &RerankParams::default())?;
/// for (q, ranking) in rankings.iter().enumerate() {
///     // Itself first: every keypoint verifies.
///     assert_eq!(ranking[0].db, q);
///     assert_eq!(ranking[0].inliers, db[q].num_local());
///     assert!(ranking.windows(2).all(|w| w[0].inliers >= w[1].inliers));
/// }
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
pub fn search_reranked(
    gpu: &Arc<Gpu>,
    queries: &FeatureSet,
    db: &FeatureSet,
    k: usize,
    params: &RerankParams,
) -> Result<Vec<Vec<Hit>>> {
    same_size("local", queries.local_dim, db.local_dim)?;
    let mut matcher = LocalMatcher::new(gpu, params.match_on);
    search(gpu, queries, db, k)?
        .iter()
        .enumerate()
        .map(|(q, hits)| {
            rerank(
                &queries.image(q),
                db,
                hits,
                &|_| false,
                params,
                &mut matcher,
            )
        })
        .collect()
}

/// Local matches of two images, verified.
#[derive(Clone, Debug)]
pub struct Verified {
    /// Putative correspondences (B's nearest neighbour in A under the
    /// distance threshold), with RANSAC's inlier flag.
    pub matches: Vec<PairMatch>,
    /// DELG's score: 0 below 4 putative matches or without a fitted model.
    pub inliers: usize,
    /// Maps A's (x, y) pixels onto B's; `None` when RANSAC fitted nothing.
    pub transform: Option<Transform>,
}

/// Matches B's local descriptors to A's (DELG's rule: nearest neighbour
/// below `matching.threshold`) and verifies the matches with RANSAC, as
/// `delg-gpu match` does. B plays DELG's query, A the database image.
///
/// ```
/// use delg_gpu::{match_features, Extractor, Gpu, GpuOptions, MatchParams, Model, RansacParams};
/// # fn main() -> delg_gpu::Result<()> {
/// let gpu = Gpu::new(&GpuOptions::default())?;
/// let mut extractor = Extractor::new(&gpu, &Model::tiny_random(9)?)?;
/// let image = extractor.extract(&delg_gpu::render_scene(4, 0, 96))?;
///
/// // An image against itself: all keypoints verify and the transform is the identity.
/// let verified = match_features(&image, &image, &MatchParams::default(), &RansacParams::default())?;
/// assert_eq!(verified.inliers, image.num_local());
/// let [x, y] = verified.transform.unwrap().apply([30.0, 40.0]);
/// assert!((x - 30.0).abs() < 1e-3 && (y - 40.0).abs() < 1e-3);
/// # Ok(())
/// # }
/// ```
pub fn match_features(
    a: &Features,
    b: &Features,
    matching: &MatchParams,
    ransac: &RansacParams,
) -> Result<Verified> {
    let dim = match (local_dim_of(a)?, local_dim_of(b)?) {
        (Some(da), Some(db)) if da != db => {
            return Err(Error::InvalidArgument(format!(
            "'{}' has {da}-d local descriptors but '{}' {db}-d: extract both with the same model",
            a.id, b.id
        )))
        }
        (Some(d), Some(_)) => d,
        // An image without keypoints matches nothing.
        _ => {
            return Ok(Verified {
                matches: Vec::new(),
                inliers: 0,
                transform: None,
            })
        }
    };
    let putative = match_descriptors(&b.descriptors, &a.descriptors, dim, matching)?;
    let verification = verify(&b.locations, &a.locations, &putative, ransac)?;
    let mask = verification.ransac.as_ref().map(|r| r.inliers.as_slice());
    let matches = putative
        .iter()
        .enumerate()
        .map(|(i, m)| PairMatch {
            a: m.db,
            b: m.query,
            distance: m.distance,
            inlier: mask.is_some_and(|k| k[i]),
        })
        .collect();
    Ok(Verified {
        matches,
        inliers: verification.score,
        // RANSAC fits (y, x) of A onto (y, x) of B.
        transform: verification.ransac.map(|r| r.model.swap_axes()),
    })
}
