//! The extract job: every image of a collection through the extractor, with
//! a journal so that an interrupted run resumes, and the feature set streamed
//! from the journal at the end (memory does not grow with the collection).

pub mod agreement;
pub mod extractor;
pub mod recipe;

pub use agreement::{agreement, Agreement};
pub use extractor::{Extracted, Extractor, PendingBatch, PreparedImage, StageTimes};
pub use recipe::{
    aggregate_global, l2_normalize, prepare_image, prepare_rgb, select_local, CropBox,
    ExtractConfig, LevelOutput, LocalFeatures, PixelNorm,
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What `delg-gpu extract` was asked to do.
pub struct ExtractJob {
    pub input: std::path::PathBuf,
    pub out: std::path::PathBuf,
    pub weights: std::path::PathBuf,
    pub config: ExtractConfig,
    pub shard: Option<crate::jobs::collection::Shard>,
    /// Only these images (relative to `input`), e.g. the queries of a ground-truth file.
    pub only: Option<Vec<String>>,
    /// Crop boxes by relative path.
    pub crops: std::collections::HashMap<String, CropBox>,
    pub quiet: bool,
    /// Images of equal resized size run together per pyramid level (None:
    /// the adapter's tuning table decides). Outputs do not depend on it.
    pub batch: Option<usize>,
}

/// How many batches' worth of images the job looks ahead for images of the
/// oldest one's size: bounds memory while mixed sizes still fill batches.
const LOOK_AHEAD_BATCHES: usize = 4;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ExtractSummary {
    /// Images found (after sharding and selection).
    pub images: usize,
    pub extracted_now: usize,
    pub resumed: usize,
    /// Images and folder entries that could not be extracted (each a line
    /// of errors.txt).
    pub failed: usize,
    pub local_features: usize,
    pub seconds: f64,
}

/// The resolved configuration written next to the features; a resumed run
/// must match it, and `merge` checks that shards agree on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The weights as given (for the reader; resume compares `model_id`).
    pub weights: String,
    pub weights_bytes: u64,
    /// FNV-1a of the weight file's bytes: the same model by any path or
    /// copy; search and eval refuse to mix feature folders of different models.
    pub model_id: String,
    pub tau: f32,
    pub shard: Option<String>,
    pub extract: ExtractConfig,
    /// FNV-1a of the sorted list of images in the collection (before
    /// sharding) and its length: shards of one collection agree on it.
    #[serde(default)]
    pub collection: Option<CollectionStamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionStamp {
    pub images: usize,
    pub fingerprint: String,
}

impl CollectionStamp {
    pub fn of(ids: &[String]) -> CollectionStamp {
        let joined: Vec<u8> = ids
            .iter()
            .flat_map(|id| [id.as_bytes(), b"\n"].concat())
            .collect();
        CollectionStamp {
            images: ids.len(),
            fingerprint: format!("{:016x}", crate::io::features::fnv1a(&joined)),
        }
    }
}

impl RunRecord {
    pub fn read(dir: &std::path::Path) -> Result<Option<RunRecord>> {
        let path = dir.join("config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            Error::file(
                &path,
                format!("is not a run record of delg-gpu extract ({e}); use another --out folder or delete it"),
            )
        })
    }

    /// What must agree for features to belong together: the model (by
    /// content, not path), τ and the recipe.
    pub fn differences(&self, other: &RunRecord) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.model_id != other.model_id {
            d.push("model");
        }
        if self.tau != other.tau {
            d.push("attention threshold");
        }
        if self.extract != other.extract {
            d.push("extraction settings");
        }
        d
    }
}

/// The architecture in a weight file and the paper's extraction settings for it.
pub fn defaults_for_weights(weights: &std::path::Path) -> Result<(&'static str, ExtractConfig)> {
    let meta = crate::io::weights::WeightFile::read_metadata(weights)?;
    let arch = crate::model::ModelConfig::from_metadata(&meta, weights)?.arch();
    Ok((arch, ExtractConfig::for_arch(arch)))
}

/// `defaults` overridden key by key by the JSON object in `path`, so a
/// partial file keeps the DOLG recipe for a DOLG model.
pub fn settings_file_over(
    defaults: ExtractConfig,
    path: &std::path::Path,
) -> Result<ExtractConfig> {
    let bad = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let given: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| bad(format!("bad extraction settings: {e}")))?;
    let mut merged = serde_json::to_value(&defaults).map_err(|e| bad(e.to_string()))?;
    if let Some(fields) = merged.as_object_mut() {
        fields.extend(given);
    }
    serde_json::from_value(merged).map_err(|e| bad(format!("bad extraction settings: {e}")))
}

/// The query images of a ground truth (paths relative to the collection
/// folder, each once) and the crop box of each that has one.
pub fn queries_of(
    gnd: &std::path::Path,
) -> Result<(Vec<String>, std::collections::HashMap<String, CropBox>)> {
    let gt = crate::io::groundtruth::GroundTruth::load(gnd)?;
    let mut crops = std::collections::HashMap::new();
    let mut only = Vec::new();
    for q in &gt.queries {
        let rel = format!("{}/{}{}", gt.image_dir, q.image, gt.image_ext);
        if let Some(b) = q.bbox {
            if crops.insert(rel.clone(), b).is_some_and(|prev| prev != b) {
                return Err(Error::unsupported(
                    "extract",
                    format!("image '{}' is a query with two different boxes", q.image),
                ));
            }
        }
        if !only.contains(&rel) {
            only.push(rel);
        }
    }
    Ok((only, crops))
}

/// Extracts every image of the job, resuming from an interrupted run: images
/// in the journal whose file is unchanged (same size and modification time)
/// are kept, the others are extracted. Every failure is one line on stderr
/// and in errors.txt; the run fails only when no image could be extracted.
pub fn run_extract(
    gpu: &std::sync::Arc<crate::gpu::Gpu>,
    job: &ExtractJob,
) -> Result<ExtractSummary> {
    check_out_folder(&job.out)?;
    let mut extractor = Extractor::load(gpu, &job.weights, job.config.clone())?;
    run_extract_with(&mut extractor, job, &mut |_, _| Ok(()))
}

fn check_out_folder(out: &std::path::Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(Error::file(
            out,
            "is a file: --out takes a folder (created if missing)",
        ));
    }
    Ok(())
}

/// [`run_extract`] with a loaded extractor (whose model is `job.weights`
/// and whose settings are `job.config`); `progress(processed, pending)` is
/// called after each image tried now (extracted or skipped), and an error
/// from it stops the run (the journal keeps what is done: a rerun resumes).
pub fn run_extract_with(
    extractor: &mut Extractor,
    job: &ExtractJob,
    progress: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<ExtractSummary> {
    use crate::io::features::{FeatureSetWriter, FileStamp, ImageFeatures, Journal, JournalRecord};
    use crate::jobs::collection::{discover, Discovery};
    use std::io::Write;

    let start = std::time::Instant::now();
    check_out_folder(&job.out)?;
    std::fs::create_dir_all(&job.out).map_err(|e| Error::io(&job.out, e))?;
    let bar = if job.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    let found = match &job.only {
        Some(list) => {
            // Names from a ground truth or a CSV: the same rule as discovery.
            let (images, bad): (Vec<String>, Vec<String>) = list
                .iter()
                .cloned()
                .partition(|id| !id.chars().any(char::is_control));
            let reason = "name contains a line break or another control character, which ids.txt cannot hold";
            Discovery {
                images,
                problems: bad
                    .iter()
                    .map(|id| (id.escape_debug().to_string(), reason.to_string()))
                    .collect(),
            }
        }
        None => {
            bar.set_style(
                indicatif::ProgressStyle::with_template("finding images: {pos} so far")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            let walk = std::time::Instant::now();
            let found = discover(&job.input, &bar)?;
            if !job.quiet {
                bar.suspend(|| {
                    eprintln!(
                        "found {} images in {:.1} ms",
                        found.images.len(),
                        walk.elapsed().as_secs_f64() * 1e3
                    )
                });
            }
            found
        }
    };
    bar.disable_steady_tick();
    if found.images.is_empty() && found.problems.is_empty() {
        return Err(Error::file(
            &job.input,
            "holds no images (jpg, jpeg, png, webp, bmp, tif, tiff, gif, searched in sub-folders too)",
        ));
    }
    let record = RunRecord {
        weights: job.weights.display().to_string(),
        weights_bytes: std::fs::metadata(&job.weights)
            .map(|m| m.len())
            .unwrap_or(0),
        model_id: extractor.model_id.clone().unwrap_or_default(),
        tau: extractor.tau,
        shard: job.shard.map(|s| format!("{}/{}", s.index, s.count)),
        extract: ExtractConfig {
            // A guard on memory, not the recipe: a rerun may raise it and resume.
            max_pixels: ExtractConfig::default().max_pixels,
            ..job.config.clone()
        },
        collection: Some(CollectionStamp::of(&found.images)),
    };
    if let Some(previous) = RunRecord::read(&job.out)? {
        let differ = record.differences(&previous);
        if !differ.is_empty() || previous.shard != record.shard {
            let what = if differ.is_empty() {
                vec!["shard"]
            } else {
                differ
            };
            return Err(Error::file(
                &job.out,
                format!(
                    "holds features of another run (different {} in config.json); use another --out folder or delete it",
                    what.join(", ")
                ),
            ));
        }
    }
    let record_json =
        serde_json::to_string_pretty(&record).map_err(|e| Error::Internal(e.to_string()))?;
    crate::io::npy::write_atomic(&job.out.join("config.json"), record_json.as_bytes())?;

    let mut paths = found.images;
    if let Some(shard) = job.shard {
        paths.retain(|p| shard.contains(p));
    }
    let (mut journal, done) = Journal::open(&job.out.join("journal.bin"))?;
    let unstamped = done.iter().filter(|r| r.stamp.is_none()).count();
    // The last record of an id wins (a changed file is journaled again).
    // Only where each image's features are in the journal is kept in
    // memory: the final files are streamed from it.
    let mut finished: std::collections::HashMap<String, JournalRecord> =
        done.into_iter().map(|r| (r.id.clone(), r)).collect();
    let unchanged = |rel: &str, stamp: Option<FileStamp>| match stamp {
        // Journals of older versions carry no stamp: kept as they are.
        None => true,
        Some(s) => FileStamp::of(&job.input.join(rel)).is_ok_and(|now| now == s),
    };
    finished.retain(|id, record| unchanged(id, record.stamp));
    let pending: Vec<String> = paths
        .iter()
        .filter(|p| !finished.contains_key(*p))
        .cloned()
        .collect();
    let mut summary = ExtractSummary {
        images: paths.len(),
        resumed: paths.len() - pending.len(),
        ..Default::default()
    };

    let errors_path = job.out.join("errors.txt");
    let mut errors = std::fs::File::create(&errors_path).map_err(|e| Error::io(&errors_path, e))?;
    // Failures go to stderr even under --quiet, which silences progress only.
    let mut report = |rel: &str, reason: &str| -> Result<()> {
        bar.suspend(|| eprintln!("skipped {rel}: {reason}"));
        writeln!(errors, "{rel}\t{reason}").map_err(|e| Error::io(&errors_path, e))
    };
    if unstamped > 0 {
        bar.suspend(|| eprintln!(
            "note: {unstamped} journal entries from an older delg-gpu carry no file stamp and are kept; delete {} to re-extract them",
            job.out.join("journal.bin").display()
        ));
    }
    for (path, reason) in &found.problems {
        summary.failed += 1;
        report(path, reason)?;
    }
    let pending_count = pending.len();
    let mut processed = 0;
    bar.set_length(pending_count as u64);
    bar.set_position(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} images  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let cfg = job.config.clone();
    let crops = job.crops.clone();
    let rx = crate::jobs::collection::prefetch(job.input.clone(), pending, 8, move |rel, path| {
        // Stamped before reading: a file changed during the read is
        // re-extracted by the next run.
        let stamp = FileStamp::of(path)?;
        Ok((prepare_image(path, &cfg, crops.get(rel).copied())?, stamp))
    });
    let batch = job
        .batch
        .unwrap_or_else(|| extractor.default_batch())
        .max(1);
    let mut window = SizeWindow {
        source: rx.into_iter(),
        waiting: std::collections::VecDeque::new(),
        batch,
        exhausted: false,
    };
    // Group k is submitted before group k-1's results are read, so the
    // device runs k while the host selects k-1's features, writes them and
    // decodes k+1: at most two groups are in flight.
    let mut previous: Option<InFlight> = None;
    loop {
        let (group, unreadable) = window.next_group();
        let last = group.is_empty() && unreadable.is_empty();
        let current = if last {
            None
        } else {
            let flight = submit_group(extractor, &group)?;
            Some(InFlight {
                unreadable,
                group,
                flight,
            })
        };
        let Some(done) = std::mem::replace(&mut previous, current) else {
            if last {
                break;
            }
            continue;
        };
        let results = finish_group(extractor, &done.group, done.flight)?;
        let outcomes = done
            .unreadable
            .into_iter()
            .map(|(rel, e)| (rel, Err(e)))
            .chain(
                done.group
                    .into_iter()
                    .zip(results)
                    .map(|(d, r)| (d.rel, r.map(|x| (x, d.stamp)))),
            );
        for (rel, result) in outcomes {
            match result {
                Ok((x, stamp)) => {
                    let f = ImageFeatures {
                        id: rel,
                        global: x.global,
                        descriptors: x.local.descriptors,
                        locations: x.local.locations,
                        scales: x.local.scales,
                        attention: x.local.attention,
                    };
                    summary.local_features += f.num_local();
                    let record = journal.append(&f, stamp)?;
                    journal.flush()?;
                    finished.insert(record.id.clone(), record);
                    summary.extracted_now += 1;
                }
                Err(e @ (Error::DeviceLost(_) | Error::OutOfMemory { .. })) => return Err(e),
                Err(e) => {
                    summary.failed += 1;
                    report(&rel, &reason_of(&e))?;
                }
            }
            bar.inc(1);
            processed += 1;
            if let Err(e) = progress(processed, pending_count) {
                bar.finish_and_clear();
                return Err(e);
            }
        }
        if last {
            break;
        }
    }
    bar.finish_and_clear();

    let ordered: Vec<JournalRecord> = paths.iter().filter_map(|p| finished.remove(p)).collect();
    let mut out = FeatureSetWriter::create(
        &job.out,
        ordered.len(),
        ordered.iter().map(|r| r.num_local).sum(),
        extractor.model.global_dim(),
        extractor.local_dim(),
        job.config.binarize,
    )?;
    for record in &ordered {
        out.push(&journal.read(record)?)?;
    }
    out.finish()?;
    summary.seconds = start.elapsed().as_secs_f64();
    if ordered.is_empty() && summary.failed > 0 {
        return Err(Error::file(
            &job.input,
            format!(
                "none of its {} images could be extracted: see {} for each reason",
                summary.failed,
                errors_path.display()
            ),
        ));
    }
    Ok(summary)
}

/// An image decoded and waiting for its batch.
struct Decoded {
    rel: String,
    image: PreparedImage,
    stamp: crate::io::features::FileStamp,
}

/// Decoded images in collection order, handed out in groups of equal size:
/// the oldest image and the next ones of its size within a look-ahead of
/// `LOOK_AHEAD_BATCHES` batches (so memory stays bounded however the sizes mix).
struct SizeWindow<I> {
    source: I,
    waiting: std::collections::VecDeque<Decoded>,
    batch: usize,
    exhausted: bool,
}

type Prepared = Result<(PreparedImage, crate::io::features::FileStamp)>;

impl<I: Iterator<Item = (String, Prepared)>> SizeWindow<I> {
    /// The next group (at most `batch` images, empty at the end) and the
    /// images that failed to decode meanwhile.
    fn next_group(&mut self) -> (Vec<Decoded>, Vec<(String, Error)>) {
        let mut unreadable = Vec::new();
        let capacity = self.batch * LOOK_AHEAD_BATCHES;
        while !self.exhausted
            && self.waiting.len() < capacity
            && self.same_size_as_oldest() < self.batch
        {
            match self.source.next() {
                Some((rel, Ok((image, stamp)))) => {
                    self.waiting.push_back(Decoded { rel, image, stamp })
                }
                Some((rel, Err(e))) => {
                    unreadable.push((rel, e));
                    // Reported at once when nothing waits to be extracted.
                    if self.waiting.is_empty() {
                        break;
                    }
                }
                None => self.exhausted = true,
            }
        }
        let mut group: Vec<Decoded> = self.waiting.pop_front().into_iter().collect();
        let mut i = 0;
        while i < self.waiting.len() && group.len() < self.batch {
            if self.waiting[i].image.pixels.shape == group[0].image.pixels.shape {
                group.extend(self.waiting.remove(i));
            } else {
                i += 1;
            }
        }
        (group, unreadable)
    }

    fn same_size_as_oldest(&self) -> usize {
        self.waiting.front().map_or(0, |oldest| {
            self.waiting
                .iter()
                .filter(|d| d.image.pixels.shape == oldest.image.pixels.shape)
                .count()
        })
    }
}

/// A group of images submitted (or already run alone) whose results the
/// job has not handled yet, with the images that failed to decode before it.
struct InFlight {
    unreadable: Vec<(String, Error)>,
    group: Vec<Decoded>,
    flight: Flight,
}

enum Flight {
    Submitted(PendingBatch),
    /// Results known at submission: an empty group, or a batch that failed
    /// and ran its images alone.
    Done(Vec<Result<Extracted>>),
}

/// Submits a group of images of one size as one batch (see `run_alone`
/// for a batch that fails).
fn submit_group(extractor: &mut Extractor, group: &[Decoded]) -> Result<Flight> {
    let images: Vec<&PreparedImage> = group.iter().map(|d| &d.image).collect();
    if images.is_empty() {
        return Ok(Flight::Done(Vec::new()));
    }
    match extractor.submit_batch(&images) {
        Ok(pending) => Ok(Flight::Submitted(pending)),
        Err(e) => run_alone(extractor, &images, e).map(Flight::Done),
    }
}

/// Each image's features of a submitted group (see `run_alone` for a batch
/// that fails).
fn finish_group(
    extractor: &mut Extractor,
    group: &[Decoded],
    flight: Flight,
) -> Result<Vec<Result<Extracted>>> {
    match flight {
        Flight::Done(results) => Ok(results),
        Flight::Submitted(pending) => match extractor.finish(pending) {
            Ok(results) => Ok(results),
            Err(e) => {
                let images: Vec<&PreparedImage> = group.iter().map(|d| &d.image).collect();
                run_alone(extractor, &images, e)
            }
        },
    }
}

/// After a batch failed with `e` short of losing the device (too large for
/// memory, an image the network rejects), each image runs alone: one bad
/// image cannot take the others of its group with it, and its own error is
/// the one reported.
fn run_alone(
    extractor: &mut Extractor,
    images: &[&PreparedImage],
    e: Error,
) -> Result<Vec<Result<Extracted>>> {
    match e {
        e @ Error::DeviceLost(_) => Err(e),
        e if images.len() == 1 => Ok(vec![Err(e)]),
        _ => Ok(images.iter().map(|img| extractor.extract(img)).collect()),
    }
}

/// A per-file error without the path (errors.txt and the stderr line already
/// start with it).
fn reason_of(e: &Error) -> String {
    match e {
        Error::File { reason, .. } => reason.clone(),
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}
