//! The extract job: every image of a collection through the extractor, with
//! a journal so that an interrupted run resumes, and the feature set written
//! atomically at the end.

pub mod extractor;
pub mod recipe;

pub use extractor::{Extracted, Extractor, PreparedImage, StageTimes};
pub use recipe::{
    aggregate_global, l2_normalize, prepare_image, select_local, CropBox, ExtractConfig,
    LevelOutput, LocalFeatures, PixelNorm,
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
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ExtractSummary {
    pub images: usize,
    pub extracted_now: usize,
    pub resumed: usize,
    pub failed: usize,
    pub local_features: usize,
    pub seconds: f64,
}

/// The resolved configuration written next to the features; a resumed run
/// must match it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RunRecord {
    weights: String,
    weights_bytes: u64,
    /// FNV-1a of the weight file's bytes: search and eval refuse to mix
    /// feature folders of different models.
    model_id: String,
    tau: f32,
    shard: Option<String>,
    extract: ExtractConfig,
}

/// Extracts every image of the job, resuming from an interrupted run.
pub fn run_extract(
    gpu: &std::sync::Arc<crate::gpu::Gpu>,
    job: &ExtractJob,
) -> Result<ExtractSummary> {
    use crate::io::features::{write_feature_set, ImageFeatures, Journal};
    use std::io::Write;

    let start = std::time::Instant::now();
    let file_err = |p: &std::path::Path, e: std::io::Error| Error::File {
        path: p.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(&job.out).map_err(|e| file_err(&job.out, e))?;
    let mut extractor = Extractor::load(gpu, &job.weights, job.config.clone())?;
    let record = RunRecord {
        weights: job.weights.display().to_string(),
        weights_bytes: std::fs::metadata(&job.weights)
            .map(|m| m.len())
            .unwrap_or(0),
        model_id: extractor.model_id.clone().unwrap_or_default(),
        tau: extractor.tau,
        shard: job.shard.map(|s| format!("{}/{}", s.index, s.count)),
        extract: job.config.clone(),
    };
    let record_path = job.out.join("config.json");
    if let Ok(text) = std::fs::read_to_string(&record_path) {
        let previous: Option<RunRecord> = serde_json::from_str(&text).ok();
        if previous.as_ref() != Some(&record) {
            return Err(Error::File {
                path: job.out.clone(),
                reason: "holds features from a different model or configuration (config.json differs); use another --out folder or delete it".into(),
            });
        }
    }
    let record_json =
        serde_json::to_string_pretty(&record).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    crate::io::npy::write_atomic(&record_path, record_json.as_bytes())?;

    let mut paths = match &job.only {
        Some(list) => list.clone(),
        None => crate::jobs::collection::discover(&job.input)?,
    };
    if let Some(shard) = job.shard {
        paths.retain(|p| shard.contains(p));
    }
    let (mut journal, done) = Journal::open(&job.out.join("journal.bin"))?;
    let finished = crate::io::features::finished_ids(&done);
    let pending: Vec<String> = paths
        .iter()
        .filter(|p| !finished.contains(*p))
        .cloned()
        .collect();
    let mut summary = ExtractSummary {
        images: paths.len(),
        resumed: paths.len() - pending.len(),
        ..Default::default()
    };

    let errors_path = job.out.join("errors.txt");
    let mut errors = std::fs::File::create(&errors_path).map_err(|e| file_err(&errors_path, e))?;
    let bar = if job.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(pending.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} images  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let cfg = job.config.clone();
    let crops = job.crops.clone();
    let rx = crate::jobs::collection::prefetch(job.input.clone(), pending, 8, move |rel, path| {
        prepare_image(path, &cfg, crops.get(rel).copied())
    });
    let mut new = Vec::new();
    for (rel, prepared) in rx {
        let result = prepared.and_then(|img| extractor.extract(&img));
        match result {
            Ok(x) => {
                let f = ImageFeatures {
                    id: rel,
                    global: x.global,
                    descriptors: x.local.descriptors,
                    locations: x.local.locations,
                    scales: x.local.scales,
                    attention: x.local.attention,
                };
                summary.local_features += f.num_local();
                journal.append(&f)?;
                journal.flush()?;
                new.push(f);
                summary.extracted_now += 1;
            }
            Err(e @ (Error::DeviceLost(_) | Error::OutOfMemory { .. })) => return Err(e),
            Err(e) => {
                summary.failed += 1;
                writeln!(errors, "{rel}\t{e}").map_err(|e| file_err(&errors_path, e))?;
                bar.println(format!("skipped {rel}: {e}"));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let mut by_id: std::collections::HashMap<String, ImageFeatures> = done
        .into_iter()
        .chain(new)
        .map(|f| (f.id.clone(), f))
        .collect();
    let ordered: Vec<ImageFeatures> = paths.iter().filter_map(|p| by_id.remove(p)).collect();
    write_feature_set(
        &job.out,
        &ordered,
        extractor.local_dim(),
        job.config.binarize,
    )?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}
