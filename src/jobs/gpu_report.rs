//! `delg-gpu bench gpu`: the one command someone with a real GPU runs to
//! report what delg-gpu does on it (issue 17 item 6). Every section reuses
//! the benchmark the project already has for it (`jobs::bench`, the training
//! step graph, the `extract` command in a child process) and the whole report
//! goes into one JSON file with a schema version; docs/gpu-results.md says
//! how to read it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bench::{self, AdapterReport, BenchResult, ExtractFigures};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptions, HostWorkPerImage};
use crate::model::ModelConfig;
use crate::tensor::{Rng, Tensor};

/// Changes whenever a field changes meaning or goes away (adding one does not).
pub const SCHEMA_VERSION: u32 = 1;
pub const SCHEMA: &str = "delg-gpu/bench-gpu";

/// Fields that may be null in a complete report: they depend on the OS or the adapter.
pub const OPTIONAL_FIELDS: [&str; 8] = [
    "adapter.llvmpipe_bits",
    "host.load_average",
    "kernels.cases[].gflop_per_cpu_s",
    "extraction.batch_1.gflop_per_cpu_s",
    "extraction.best_batch.gflop_per_cpu_s",
    "extraction.batches[].gflop_per_cpu_s",
    "f16_extraction.f32.gflop_per_cpu_s",
    "f16_extraction.f16.gflop_per_cpu_s",
];

/// The batches extraction is measured at besides 1; the fastest is `best_batch`.
const BATCHES: [usize; 2] = [2, 4];

/// Issue 17's bound on the host's recording and submitting CPU per image.
const HOST_CPU_BOUND_MS: f64 = 10.0;

/// How much work each section does.
#[derive(Clone, Debug)]
pub struct ReportSize {
    pub name: &'static str,
    pub model: ModelConfig,
    /// Kernel shapes are ResNet-50's at this input size (1024: the published ones).
    pub kernel_image: usize,
    pub kernel_reps: usize,
    pub kernel_budget: Duration,
    /// Extraction and cold-start image (width, height).
    pub image: (u32, u32),
    pub extract_images: usize,
    pub train: TrainShape,
}

/// The training step measured: one micro-batch of `batch` square images.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TrainShape {
    pub batch: usize,
    pub image_size: usize,
    pub classes: usize,
    /// Timed steps after one warm-up step.
    pub steps: usize,
}

impl ReportSize {
    /// DELG-R50 at the sizes of the published figures: kernels at a 1024²
    /// input, extraction of 1024×768 images (7 + 3 scales), a training step
    /// of 4 images at 224² over 1000 classes. Tens of minutes on lavapipe.
    pub fn full() -> Result<ReportSize> {
        let mut args = crate::cli::ModelArgs::tiny_delg();
        args.depth = "50".into();
        Ok(ReportSize {
            name: "full",
            model: args.model_config()?,
            kernel_image: 1024,
            kernel_reps: 3,
            kernel_budget: Duration::from_secs(1),
            image: (1024, 768),
            extract_images: 2,
            train: TrainShape {
                batch: 4,
                image_size: 224,
                classes: 1000,
                steps: 2,
            },
        })
    }

    /// The tiny DELG model and ResNet-50's kernels at a 64² input: every
    /// section in about a minute on lavapipe, for tests and a first look.
    pub fn quick() -> Result<ReportSize> {
        Ok(ReportSize {
            name: "quick",
            model: crate::cli::ModelArgs::tiny_delg().model_config()?,
            kernel_image: 64,
            kernel_reps: 2,
            kernel_budget: Duration::from_millis(10),
            image: (256, 192),
            extract_images: 1,
            train: TrainShape {
                batch: 2,
                image_size: 128,
                classes: 10,
                steps: 1,
            },
        })
    }
}

/// The whole report, as written to the JSON file.
#[derive(Debug, Serialize)]
pub struct GpuReport {
    pub schema: &'static str,
    pub schema_version: u32,
    pub delg_gpu_version: &'static str,
    /// "full" or "quick".
    pub size: &'static str,
    /// Seconds since 1970 when the run started.
    pub started_unix_s: u64,
    pub host: HostReport,
    pub adapter: AdapterReport,
    pub kernels: KernelSection,
    pub extraction: ExtractionSection,
    pub f16_extraction: F16Section,
    pub training_step: TrainStepFigures,
    pub cold_start: ColdStart,
    pub host_overhead: HostOverhead,
    pub device_memory: DeviceMemory,
}

#[derive(Debug, Serialize)]
pub struct HostReport {
    /// Model, widest vector unit and logical CPUs: on a CPU emulation this
    /// is the device; on a GPU it bounds host work and cold start.
    pub cpu: String,
    /// 1, 5 and 15 minute load averages when the run started (Linux).
    pub load_average: Option<[f64; 3]>,
}

#[derive(Debug, Serialize)]
pub struct KernelSection {
    /// The ResNet-50 input size the shapes come from.
    pub image: usize,
    pub min_reps: usize,
    pub budget_s_per_case: f64,
    /// The tuning table's matmul variant on this adapter.
    pub chosen_variant: String,
    /// Every case on every variant the adapter supports.
    pub cases: Vec<BenchResult>,
    /// GEMMs and convolutions summed, per variant.
    pub variants: Vec<VariantSummary>,
}

#[derive(Debug, Serialize)]
pub struct VariantSummary {
    pub variant: String,
    pub chosen: bool,
    pub cases: usize,
    pub gflop: f64,
    pub ms: f64,
    pub gflops: f64,
}

#[derive(Debug, Serialize)]
pub struct ExtractionSection {
    pub batch_1: ExtractFigures,
    /// The fastest batch measured (batch 1 included): what the tuning
    /// table's `extract_batch` should be for this adapter.
    pub best_batch: ExtractFigures,
    /// Every batch measured, in order.
    pub batches: Vec<BatchRate>,
    pub batching_available: bool,
}

/// Extraction at batch 1 with the backbone stored in f16 (`--precision
/// f16`) against f32, or why it was not measured.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum F16Section {
    /// Each precision on a device of its own, so that each one's
    /// `device_bytes` counts only its own scratch (the sections before
    /// leave theirs on the report's device).
    Measured {
        f32: ExtractFigures,
        f16: ExtractFigures,
        /// f16 images/s over f32's: above 1 where f16 is faster.
        speed_vs_f32: f64,
        /// f16 device bytes over f32's: below 1 where f16 holds less.
        memory_vs_f32: f64,
    },
    Skipped {
        reason: String,
    },
}

#[derive(Debug, Serialize)]
pub struct BatchRate {
    pub batch: usize,
    pub images_per_s: f64,
    pub gflop_per_cpu_s: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct TrainStepFigures {
    pub model: String,
    pub shape: TrainShape,
    /// The first step, which compiles every pipeline.
    pub warmup_s: f64,
    /// Median of the timed steps: forward, backward, clipping and SGD.
    pub ms_per_step: f64,
    pub images_per_s: f64,
    pub gflop_per_step: f64,
    pub gflops: f64,
    /// The last step's loss (random weights and data: only its finiteness means anything).
    pub loss: f64,
}

#[derive(Debug, Serialize)]
pub struct ColdStart {
    pub model: String,
    pub width: u32,
    pub height: u32,
    /// `extract` of one image in a new process, start to exit (features on
    /// disk), compiling every pipeline afresh (`--no-pipeline-cache`).
    pub no_cache_s: f64,
    /// The same with an empty pipeline cache folder, which this run fills.
    pub cache_first_run_s: f64,
    /// The same again, with the cache the run before wrote.
    pub cache_warm_s: f64,
    /// Size of the cache file; a few hundred bytes mean the driver keeps
    /// no compiled pipelines in it (lavapipe).
    pub cache_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct HostOverhead {
    pub per_image: HostWorkPerImage,
    pub bound_ms: f64,
    pub within_bound: bool,
}

#[derive(Debug, Serialize)]
pub struct DeviceMemory {
    /// What the extractor held after the extraction section (parameters,
    /// the cached plans of every pyramid level, kernel scratch).
    pub extraction_bytes: u64,
    /// The training step's plan by category (`train --plan-only`).
    pub training: Vec<MemoryRow>,
    pub training_total_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct MemoryRow {
    pub what: &'static str,
    pub bytes: u64,
}

/// Runs every section on the adapter `opts` chooses, prints a summary as it
/// goes, and writes the report to `json` (atomically). `exe` is this
/// program, run again for the cold start. Fails after writing when a figure
/// is missing or not finite.
pub fn run_gpu_report(
    opts: &GpuOptions,
    size: &ReportSize,
    exe: &Path,
    json: Option<&Path>,
) -> Result<GpuReport> {
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let host = HostReport {
        cpu: crate::gpu::cpu::describe_cpu(),
        load_average: load_average(),
    };
    let gpus = Gpu::every_variant(opts)?;
    let gpu = gpus[0].clone();
    let adapter = AdapterReport::of(&gpu);
    println!("== adapter ({} report)", size.name);
    adapter.print("");
    println!(
        "host: {}{}",
        host.cpu,
        host.load_average
            .map(|l| format!(", load average {:.2} {:.2} {:.2}", l[0], l[1], l[2]))
            .unwrap_or_default()
    );

    println!("== cold start: extract of one image in a new process");
    let cold_start = measure_cold_start(exe, opts, size)?;
    println!(
        "{} {}x{}: {:.2} s without the pipeline cache, {:.2} s filling it, {:.2} s with it ({} bytes)",
        cold_start.model,
        cold_start.width,
        cold_start.height,
        cold_start.no_cache_s,
        cold_start.cache_first_run_s,
        cold_start.cache_warm_s,
        cold_start.cache_bytes
    );

    println!(
        "== kernels: ResNet-50 shapes at a {0}x{0} input",
        size.kernel_image
    );
    bench::print_columns();
    let mut cases = Vec::new();
    bench::measure_kernels(
        &gpus,
        size.kernel_image,
        None,
        size.kernel_reps,
        size.kernel_budget,
        |r| {
            bench::print_row(r);
            cases.push(r.clone());
        },
    )?;
    drop(gpus);
    let kernels = KernelSection {
        image: size.kernel_image,
        min_reps: size.kernel_reps,
        budget_s_per_case: size.kernel_budget.as_secs_f64(),
        chosen_variant: gpu.tuning.describe(),
        variants: summarise_variants(&cases, &gpu.tuning.describe()),
        cases,
    };
    for v in &kernels.variants {
        println!(
            "{:<28} GEMMs and convolutions: {:.2} GFLOP/s over {} cases{}",
            v.variant,
            v.gflops,
            v.cases,
            if v.chosen {
                " (the tuning table's choice)"
            } else {
                ""
            }
        );
    }

    println!("== extraction, batch 1 and {BATCHES:?}");
    let (w, h) = size.image;
    let f32 = crate::tensor::Precision::F32;
    let batch_1 = bench::bench_extract(&gpu, &size.model, w, h, size.extract_images, 1, f32)?;
    let mut batched = Vec::new();
    for batch in BATCHES {
        batched.push(bench::bench_extract(
            &gpu,
            &size.model,
            w,
            h,
            size.extract_images,
            batch,
            f32,
        )?);
    }
    let batches: Vec<BatchRate> = std::iter::once(&batch_1)
        .chain(&batched)
        .map(|f| BatchRate {
            batch: f.batch,
            images_per_s: f.images_per_s,
            gflop_per_cpu_s: f.gflop_per_cpu_s,
        })
        .collect();
    let best_batch = batched
        .into_iter()
        .filter(|f| f.images_per_s > batch_1.images_per_s)
        .max_by(|a, b| a.images_per_s.total_cmp(&b.images_per_s))
        .unwrap_or_else(|| batch_1.clone());
    println!(
        "best batch {}: {:.3} images/s (batch 1: {:.3})",
        best_batch.batch, best_batch.images_per_s, batch_1.images_per_s
    );

    println!("== f16 extraction, batch 1, against f32");
    let f16_extraction = measure_f16(&gpu, opts, size)?;
    match &f16_extraction {
        F16Section::Measured {
            speed_vs_f32,
            memory_vs_f32,
            ..
        } => println!(
            "f16 against f32: {speed_vs_f32:.3}x the images/s, {memory_vs_f32:.3}x the device memory"
        ),
        F16Section::Skipped { reason } => println!("skipped: {reason}"),
    }

    println!("== one training step");
    let (training_step, train_config) = measure_train_step(&gpu, &size.model, size.train)?;
    println!(
        "{} batch {} x {}^2, {} classes: {:.1} ms/step ({:.2} images/s, {:.1} GFLOP/step, {:.2} GFLOP/s; first step {:.1} s)",
        training_step.model,
        size.train.batch,
        size.train.image_size,
        size.train.classes,
        training_step.ms_per_step,
        training_step.images_per_s,
        training_step.gflop_per_step,
        training_step.gflops,
        training_step.warmup_s
    );
    let training: Vec<MemoryRow> = crate::jobs::train::planned_memory(&gpu, &train_config)?
        .into_iter()
        .map(|(what, bytes)| MemoryRow { what, bytes })
        .collect();
    let device_memory = DeviceMemory {
        extraction_bytes: batch_1.device_bytes,
        training_total_bytes: training.iter().map(|r| r.bytes).sum(),
        training,
    };
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!(
        "== device memory: extraction {:.1} MiB; training step plan {:.1} MiB",
        mib(device_memory.extraction_bytes),
        mib(device_memory.training_total_bytes)
    );

    let per_image = batch_1.host_per_image;
    let report = GpuReport {
        schema: SCHEMA,
        schema_version: SCHEMA_VERSION,
        delg_gpu_version: crate::VERSION,
        size: size.name,
        started_unix_s,
        host,
        adapter,
        kernels,
        extraction: ExtractionSection {
            batch_1,
            best_batch,
            batches,
            batching_available: true,
        },
        f16_extraction,
        training_step,
        cold_start,
        host_overhead: HostOverhead {
            per_image,
            bound_ms: HOST_CPU_BOUND_MS,
            within_bound: per_image.record_submit_cpu_ms <= HOST_CPU_BOUND_MS,
        },
        device_memory,
    };
    let value = serde_json::to_value(&report)
        .map_err(|e| Error::Internal(format!("the report does not serialise: {e}")))?;
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&value)
            .map_err(|e| Error::Internal(format!("the report does not serialise: {e}")))?;
        crate::io::npy::write_atomic(path, text.as_bytes())?;
        println!("report written to {}", path.display());
    }
    let missing = missing_figures(&value, &OPTIONAL_FIELDS);
    if !missing.is_empty() {
        return Err(Error::Internal(format!(
            "the report lacks these figures (absent, empty or not finite): {}",
            missing.join(", ")
        )));
    }
    Ok(report)
}

/// The f16 section: batch 1 at f32 and at f16, each on a fresh device with
/// `gpu`'s tuning; skipped with the reason on adapters without SHADER_F16.
fn measure_f16(gpu: &Arc<Gpu>, opts: &GpuOptions, size: &ReportSize) -> Result<F16Section> {
    use crate::tensor::Precision;
    if !gpu.features.contains(wgpu::Features::SHADER_F16) {
        return Ok(F16Section::Skipped {
            reason: format!(
                "the adapter {} does not offer 16-bit floats in shaders (SHADER_F16), \
                 so extract refuses --precision f16 on it",
                gpu.facts.name
            ),
        });
    }
    let (w, h) = size.image;
    let at = |precision| -> Result<ExtractFigures> {
        let fresh = Gpu::new_with_tuning(opts, gpu.tuning)?;
        bench::bench_extract(&fresh, &size.model, w, h, size.extract_images, 1, precision)
    };
    let f32 = at(Precision::F32)?;
    let f16 = at(Precision::F16)?;
    Ok(F16Section::Measured {
        speed_vs_f32: f16.images_per_s / f32.images_per_s,
        memory_vs_f32: f16.device_bytes as f64 / f32.device_bytes as f64,
        f32,
        f16,
    })
}

/// GFLOP/s of the GEMMs and convolutions together, per matmul variant.
fn summarise_variants(cases: &[BenchResult], chosen: &str) -> Vec<VariantSummary> {
    let mut out: Vec<VariantSummary> = Vec::new();
    let matmul = cases
        .iter()
        .filter(|c| c.name.starts_with("gemm") || c.name.starts_with("conv"));
    for c in matmul {
        let i = match out.iter().position(|v| v.variant == c.variant) {
            Some(i) => i,
            None => {
                out.push(VariantSummary {
                    variant: c.variant.clone(),
                    chosen: c.variant == chosen,
                    cases: 0,
                    gflop: 0.0,
                    ms: 0.0,
                    gflops: 0.0,
                });
                out.len() - 1
            }
        };
        let v = &mut out[i];
        v.cases += 1;
        v.gflop += c.gflop;
        v.ms += c.ms;
        v.gflops = v.gflop / (v.ms / 1e3);
    }
    out
}

/// The load averages of /proc/loadavg.
fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// One training step of `model` with random weights and data: the step
/// graphs `train` runs (forward, backward, gradient accumulation, then
/// clipping and SGD), one warm-up step, then the median of the timed ones.
/// Also the configuration, whose plan the memory section reports.
fn measure_train_step(
    gpu: &Arc<Gpu>,
    model: &ModelConfig,
    shape: TrainShape,
) -> Result<(TrainStepFigures, crate::jobs::train::TrainConfig)> {
    use crate::jobs::train::{build_step, upload_state, TrainOptions};
    let options = TrainOptions {
        batch: shape.batch,
        image_size: shape.image_size,
        checkpoint_every: 1000,
        val_fraction: 0.0,
        ..Default::default()
    };
    let cfg = options.resolve(model.clone(), shape.classes)?;
    let sg = build_step(&cfg)?;
    let weights = crate::model::params::random_weights(&sg.specs, cfg.seed);
    let store = upload_state(gpu, &sg, &weights, &cfg)?;
    drop(weights);
    let (micro, update) = sg.executables(gpu, &store)?;
    let mut rng = Rng::new(3);
    let s = shape.image_size;
    micro.set_input(sg.images, &rng.tensor([shape.batch, s, s, 3], -1.0, 1.0))?;
    let labels = (0..shape.batch)
        .map(|i| (i % shape.classes) as f32)
        .collect();
    micro.set_input(sg.labels, &Tensor::new([shape.batch], labels)?)?;
    micro.set_input(sg.keep, &Tensor::new([1], vec![0.0])?)?;
    update.set_input(sg.lr, &Tensor::new([1], vec![cfg.lr])?)?;
    let step = || -> Result<f32> {
        micro.run()?;
        update.run()?;
        // Reading the loss waits for the step, as training does every step.
        Ok(micro.read(sg.outputs[0])?.data[0])
    };
    let t = Instant::now();
    step()?;
    let warmup_s = t.elapsed().as_secs_f64();
    let mut times = Vec::new();
    let mut loss = f32::NAN;
    for _ in 0..shape.steps.max(1) {
        let t = Instant::now();
        loss = step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let gflop = (micro.flops + update.flops) as f64 / 1e9;
    let figures = TrainStepFigures {
        model: bench::model_name(model),
        shape,
        warmup_s,
        ms_per_step: median * 1e3,
        images_per_s: shape.batch as f64 / median,
        gflop_per_step: gflop,
        gflops: gflop / median,
        loss: loss as f64,
    };
    Ok((figures, cfg))
}

/// Process start to the first image's features on disk: `exe extract` on
/// one generated image in a new process, without the pipeline cache, with
/// an empty one (which it fills) and with the filled one. The driver's own
/// shader cache, if it has one, is left as the user has it.
fn measure_cold_start(exe: &Path, opts: &GpuOptions, size: &ReportSize) -> Result<ColdStart> {
    let dir = std::env::temp_dir().join(format!("delg-gpu-cold-start-{}", std::process::id()));
    let result = cold_start_in(&dir, exe, opts, size);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn cold_start_in(
    dir: &Path,
    exe: &Path,
    opts: &GpuOptions,
    size: &ReportSize,
) -> Result<ColdStart> {
    let (images, cache) = (dir.join("images"), dir.join("pipelines"));
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    let (w, h) = size.image;
    let img = crate::jobs::demo::render_scene(1, 0, w.max(h));
    let img = image::imageops::crop_imm(&img, 0, 0, w, h).to_image();
    let photo = images.join("scene.jpg");
    img.save(&photo)
        .map_err(|e| Error::file(&photo, e.to_string()))?;
    let weights = dir.join("model.safetensors");
    size.model.random_weights(0, 0.0)?.save(&weights)?;
    let run = |out: &str, no_cache: bool| -> Result<f64> {
        let out = dir.join(out);
        let mut cmd = Command::new(exe);
        if let Some(b) = &opts.backend {
            cmd.args(["--backend", b]);
        }
        if let Some(a) = &opts.adapter {
            cmd.args(["--adapter", a]);
        }
        if no_cache {
            cmd.arg("--no-pipeline-cache");
        }
        cmd.arg("extract")
            .arg(&images)
            .arg("--weights")
            .arg(&weights)
            .arg("--out")
            .arg(&out)
            .env("DELG_GPU_CACHE_DIR", &cache)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t = Instant::now();
        let child = cmd.output().map_err(|e| Error::io(exe, e))?;
        let secs = t.elapsed().as_secs_f64();
        let global = out.join("global.npy");
        if !child.status.success() || !global.exists() {
            return Err(Error::Internal(format!(
                "the cold-start run `{} extract` failed ({}): {}",
                exe.display(),
                child.status,
                String::from_utf8_lossy(&child.stderr).trim()
            )));
        }
        Ok(secs)
    };
    let no_cache_s = run("no-cache", true)?;
    let cache_first_run_s = run("cache-first", false)?;
    let cache_warm_s = run("cache-warm", false)?;
    let cache_bytes = std::fs::read_dir(&cache)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    Ok(ColdStart {
        model: bench::model_name(&size.model),
        width: w,
        height: h,
        no_cache_s,
        cache_first_run_s,
        cache_warm_s,
        cache_bytes,
    })
}

/// The paths of figures a report lacks: nulls (serde_json writes NaN and
/// infinities as null too) and empty lists, except at the `optional` paths
/// (list elements written `[]`, as in "kernels.cases[].gflop_per_cpu_s").
pub fn missing_figures(report: &serde_json::Value, optional: &[&str]) -> Vec<String> {
    fn walk(v: &serde_json::Value, path: &str, optional: &[&str], out: &mut Vec<String>) {
        use serde_json::Value;
        match v {
            Value::Null if !optional.contains(&path) => out.push(path.to_string()),
            Value::Array(items) if items.is_empty() => out.push(path.to_string()),
            Value::Array(items) => {
                for item in items {
                    walk(item, &format!("{path}[]"), optional, out);
                }
            }
            Value::Object(fields) => {
                for (key, item) in fields {
                    let path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(item, &path, optional, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(report, "", optional, &mut out);
    out.dedup();
    out
}

/// The executable `bench gpu` runs for the cold start: this program.
pub fn this_program() -> Result<PathBuf> {
    std::env::current_exe().map_err(|e| Error::io("<this executable>", e))
}

#[cfg(test)]
mod tests {
    use super::missing_figures;
    use serde_json::json;

    #[test]
    fn missing_figures_names_nulls_and_empty_lists_outside_the_optional_ones() {
        let report = json!({
            "a": {"x": 1.0, "y": null},
            "cases": [{"v": 2.0, "cpu": null}, {"v": null, "cpu": 1.0}],
            "empty": [],
            "best": null
        });
        let missing = missing_figures(&report, &["best", "cases[].cpu"]);
        assert_eq!(missing, vec!["a.y", "cases[].v", "empty"]);
        // serde_json turns a NaN into null, so it is reported too.
        let nan =
            serde_json::to_value(std::collections::BTreeMap::from([("ms", f64::NAN)])).unwrap();
        assert_eq!(missing_figures(&nan, &[]), vec!["ms"]);
    }
}
