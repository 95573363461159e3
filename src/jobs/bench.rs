//! `delg-gpu bench kernels`: every kernel at the shapes that matter, timed on
//! the device through the same planned, recorded path the models use, with
//! every matmul variant the adapter supports side by side, so each figure has
//! a baseline from the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptions, Tuning};
use crate::graph::exec::{Executable, ParamStore};
use crate::graph::{Graph, Op};
use crate::tensor::{Rng, Shape};

/// One op at one shape.
pub struct BenchCase {
    pub name: String,
    pub op: Arc<dyn Op>,
    pub inputs: Vec<Shape>,
}

impl BenchCase {
    pub fn new(name: impl Into<String>, op: impl Op + 'static, inputs: &[&[usize]]) -> Self {
        BenchCase {
            name: name.into(),
            op: Arc::new(op),
            inputs: inputs.iter().map(|d| Shape::new(d)).collect(),
        }
    }

    /// The op planned and recorded on `gpu` with random inputs, run once
    /// (pipeline JIT); also the bytes of its outputs.
    pub fn prepare(&self, gpu: &Arc<Gpu>) -> Result<(Executable, u64)> {
        let mut g = Graph::new();
        let ins: Vec<_> = self
            .inputs
            .iter()
            .enumerate()
            .map(|(i, s)| g.input(&format!("x{i}"), s.clone()))
            .collect();
        let outs = g.apply_arc(self.op.clone(), &ins)?;
        let exe = Executable::new(gpu, &g, &outs, &ParamStore::default())?;
        let mut rng = Rng::new(1);
        for (t, s) in ins.iter().zip(&self.inputs) {
            exe.set_input(*t, &rng.tensor(s.clone(), -1.0, 1.0))?;
        }
        exe.run()?;
        Ok((exe, outs.iter().map(|o| g.shape(*o).bytes()).sum()))
    }

    /// GFLOPs of one run.
    pub fn flops(&self) -> u64 {
        self.op.flops(&self.inputs.iter().collect::<Vec<_>>())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub name: String,
    /// The adapter's name: on llvmpipe it gives the vector width ("512 bits").
    pub adapter: String,
    pub variant: String,
    pub reps: usize,
    /// GFLOP of one run (so figures of several cases can be summed).
    pub gflop: f64,
    pub ms: f64,
    pub gflops: f64,
    /// FLOPs per second of process CPU time: less sensitive than wall time to
    /// a shared machine when the device is a CPU driver like lavapipe.
    pub gflop_per_cpu_s: Option<f64>,
    pub gbytes: f64,
}

/// Process CPU time (user + system, all threads), where the OS exposes it.
pub fn cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage only writes into the struct we pass.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: rc == 0 means the kernel filled the struct.
        let u = unsafe { usage.assume_init() };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        Some(tv(u.ru_utime) + tv(u.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Times `case` on `gpu`: one warm-up (pipeline JIT), then repetitions until
/// `budget` is spent (at least `min_reps`); the median rep is reported.
pub fn run_case(
    gpu: &Arc<Gpu>,
    case: &BenchCase,
    min_reps: usize,
    budget: Duration,
) -> Result<BenchResult> {
    let (exe, out_bytes) = case.prepare(gpu)?;
    let mut times = Vec::new();
    let start = Instant::now();
    let cpu0 = cpu_time();
    while times.len() < min_reps || (start.elapsed() < budget && times.len() < 1000) {
        let t = Instant::now();
        exe.run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let cpu = cpu_time().zip(cpu0).map(|(a, b)| (a - b).as_secs_f64());
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let flops = case.flops() as f64;
    let bytes: u64 = case.inputs.iter().map(|s| s.bytes()).sum::<u64>() + out_bytes;
    Ok(BenchResult {
        name: case.name.clone(),
        adapter: gpu.facts.name.clone(),
        variant: gpu.tuning.describe(),
        reps: times.len(),
        gflop: flops / 1e9,
        ms: median * 1e3,
        gflops: flops / median / 1e9,
        gflop_per_cpu_s: cpu
            .filter(|c| *c > 0.0)
            .map(|c| flops * times.len() as f64 / c / 1e9),
        gbytes: bytes as f64 / median / 1e9,
    })
}

/// The kernel cases: every distinct convolution of ResNet-50 (torchvision
/// layout) on an `image`×`image` input (1024 for the published figures), the
/// GEMMs of the acceptance figures (1024³ and 2048³ at 1024, scaled with the
/// image), and the memory-bound ops at activation sizes of the same network.
/// Channels never scale: a smaller `image` keeps every layer's shape of
/// weights and only shrinks the maps (`bench gpu --quick`).
pub fn kernel_cases(image: usize) -> Vec<BenchCase> {
    use crate::ops::batchnorm::{BatchNormGrad, BatchNormTrain};
    use crate::ops::conv2d::{Conv2d, Conv2dInputGrad, Conv2dWeightGrad, Padding};
    use crate::ops::elementwise::{Binary, BinaryKind, Unary, UnaryKind};
    use crate::ops::gemm::Matmul;
    use crate::ops::pool::MaxPool;
    // A size given for a 1024-pixel input, at `image` pixels.
    let at = |size: usize| (size * image / 1024).max(1);
    let mut cases: Vec<BenchCase> = [at(1024), at(2048)]
        .into_iter()
        .map(|n| {
            BenchCase::new(
                format!("gemm {n}x{n}x{n}"),
                Matmul::new(false, false),
                &[&[n, n], &[n, n]],
            )
        })
        .collect();
    // (input size, c_in, c_out, kernel, stride)
    let convs: &[(usize, usize, usize, usize, usize)] = &[
        (1024, 3, 64, 7, 2),
        (256, 64, 64, 1, 1),
        (256, 64, 64, 3, 1),
        (256, 64, 256, 1, 1),
        (256, 256, 64, 1, 1),
        (256, 256, 128, 1, 1),
        (256, 128, 128, 3, 2),
        (256, 256, 512, 1, 2),
        (128, 128, 512, 1, 1),
        (128, 512, 128, 1, 1),
        (128, 128, 128, 3, 1),
        (128, 512, 256, 1, 1),
        (128, 256, 256, 3, 2),
        (128, 512, 1024, 1, 2),
        (64, 256, 1024, 1, 1),
        (64, 1024, 256, 1, 1),
        (64, 256, 256, 3, 1),
        (64, 1024, 512, 1, 1),
        (64, 512, 512, 3, 2),
        (64, 1024, 2048, 1, 2),
        (32, 512, 2048, 1, 1),
        (32, 2048, 512, 1, 1),
        (32, 512, 512, 3, 1),
    ];
    for &(hw, ci, co, k, s) in convs {
        let hw = at(hw);
        let op = Conv2d::new([s, s], Padding::symmetric(k / 2, k / 2));
        let name = format!("conv {k}x{k}/{s} {ci}->{co} {hw}x{hw}");
        cases.push(BenchCase::new(
            name,
            op,
            &[&[1, hw, hw, ci], &[k, k, ci, co]],
        ));
    }
    // The backward convolutions of the conv4 3×3, as a training step runs them.
    let conv = Conv2d::new([1, 1], Padding::symmetric(1, 1));
    let hw = at(64);
    let (x, w): (&[usize], &[usize]) = (&[1, hw, hw, 256], &[3, 3, 256, 256]);
    cases.push(BenchCase::new(
        format!("conv 3x3/1 256->256 {hw}x{hw} input grad"),
        Conv2dInputGrad {
            conv: conv.clone(),
            input_hw: [hw, hw],
        },
        &[x, w],
    ));
    cases.push(BenchCase::new(
        format!("conv 3x3/1 256->256 {hw}x{hw} weight grad"),
        Conv2dWeightGrad {
            conv,
            kernel: [3, 3],
        },
        &[x, x],
    ));
    let hw = at(256);
    let act: &[usize] = &[1, hw, hw, 256];
    cases.push(BenchCase::new(
        format!("batchnorm train 1x{hw}x{hw}x256"),
        BatchNormTrain::new(1e-5),
        &[act, &[256], &[256]],
    ));
    let fused = BatchNormTrain::new(1e-5).relu();
    cases.push(BenchCase::new(
        format!("batchnorm train+relu 1x{hw}x{hw}x256"),
        fused,
        &[act, &[256], &[256]],
    ));
    cases.push(BenchCase::new(
        format!("batchnorm train+residual+relu 1x{hw}x{hw}x256"),
        fused.residual(),
        &[act, &[256], &[256], act],
    ));
    // The backward with and without the ReLU mask folded in (inputs only
    // timed: the variances drawn from [-1, 1] give NaN for some channels).
    let v: &[usize] = &[256];
    for relu_mask in [false, true] {
        let grad = BatchNormGrad {
            eps: 1e-5,
            stat_grads: false,
            relu_mask,
        };
        let ins: &[&[usize]] = &[act, v, v, v, act, act];
        cases.push(BenchCase::new(
            format!(
                "batchnorm grad{} 1x{hw}x{hw}x256",
                if relu_mask { "+relu mask" } else { "" }
            ),
            grad,
            &ins[..5 + relu_mask as usize],
        ));
    }
    cases.push(BenchCase::new(
        format!("relu 1x{hw}x{hw}x256"),
        Unary(UnaryKind::Relu),
        &[act],
    ));
    cases.push(BenchCase::new(
        format!("relu grad 1x{hw}x{hw}x256"),
        Binary::new(BinaryKind::ReluGrad),
        &[act, act],
    ));
    cases.push(BenchCase::new(
        format!("add 1x{hw}x{hw}x256"),
        Binary::new(BinaryKind::Add),
        &[act, act],
    ));
    let hw = at(512);
    cases.push(BenchCase::new(
        format!("maxpool 3x3/2 1x{hw}x{hw}x64"),
        MaxPool::valid(3, 2),
        &[&[1, hw, hw, 64]],
    ));
    cases
}

/// Runs every kernel case whose name contains `filter` (all without one) on
/// each matmul variant the adapter supports, printing a table row (or a JSON
/// line with `json`) per case and variant (only the tuning table's own with
/// `chosen_only`). With `both_widths` (llvmpipe only) the same command then
/// runs again in a child process with llvmpipe at its other vector width.
pub fn run_kernels(
    opts: &GpuOptions,
    filter: Option<&str>,
    reps: usize,
    budget: Duration,
    json: bool,
    [chosen_only, both_widths]: [bool; 2],
) -> Result<()> {
    let mut gpus = Gpu::each_variant(opts, &crate::gpu::MatmulVariant::every())?;
    if chosen_only {
        gpus.truncate(1);
    }
    let other_width = if both_widths {
        let bits = llvmpipe_bits(&gpus[0].facts.name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--both-widths needs llvmpipe (lavapipe), whose vector width can change; the adapter is {}",
                gpus[0].facts.name
            ))
        })?;
        Some(if bits == 512 { 256 } else { 512 })
    } else {
        None
    };
    if !json {
        print_header(&gpus[0]);
    }
    measure_kernels(&gpus, 1024, filter, reps, budget, |r| {
        if json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            print_row(r);
        }
    })?;
    match other_width {
        Some(bits) => rerun_at_width(bits, "--both-widths"),
        None => Ok(()),
    }
}

/// Runs every kernel case at `image` (see `kernel_cases`) whose name contains
/// `filter` (all without one) on each device of `gpus` (one per matmul
/// variant), handing each result to `each` as it comes.
pub fn measure_kernels(
    gpus: &[Arc<Gpu>],
    image: usize,
    filter: Option<&str>,
    reps: usize,
    budget: Duration,
    mut each: impl FnMut(&BenchResult),
) -> Result<()> {
    for case in kernel_cases(image) {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        for gpu in gpus {
            each(&run_case(gpu, &case, reps, budget)?);
        }
    }
    Ok(())
}

/// The vector width in an llvmpipe adapter name, "llvmpipe (LLVM 15.0.6, 256 bits)".
pub fn llvmpipe_bits(adapter: &str) -> Option<u32> {
    let inner = adapter.strip_prefix("llvmpipe (")?;
    let (_, tail) = inner.rsplit_once(", ")?;
    tail.strip_suffix(" bits)")?.parse().ok()
}

/// Runs this process's command line again (without `flag`) in a child with
/// llvmpipe at `bits`: the width is read once, when the driver loads.
fn rerun_at_width(bits: u32, flag: &str) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::io("<this executable>", e))?;
    let args = std::env::args_os().skip(1).filter(|a| a != flag);
    println!("--- again with llvmpipe at {bits} bits (LP_NATIVE_VECTOR_WIDTH={bits}) ---");
    let status = std::process::Command::new(&exe)
        .args(args)
        .env(crate::gpu::cpu::WIDTH_VAR, bits.to_string())
        .status()
        .map_err(|e| Error::io(&exe, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "the run with llvmpipe at {bits} bits failed ({status})"
        )))
    }
}

/// `delg-gpu info`: every adapter with its backend, driver, optional
/// features, the limits that matter and the tuning delg-gpu picks for it.
pub fn print_adapters(opts: &GpuOptions) -> Result<()> {
    let adapters = crate::gpu::list_adapters(opts)?;
    if adapters.is_empty() {
        // Gpu::new turns this into the error that explains how to get a driver.
        Gpu::new(opts)?;
    }
    for (i, a) in adapters.iter().enumerate() {
        let facts = crate::gpu::AdapterFacts::from(&a.get_info());
        let features = a.features();
        let tuning = Tuning::for_adapter(
            &facts,
            features & crate::gpu::device::OPTIONAL_FEATURES,
            &a.limits(),
        );
        AdapterReport::new(&facts, features, &a.limits(), &tuning).print(&format!("[{i}] "));
    }
    Ok(())
}

/// An adapter as `info` and `bench gpu` report it: what it is, the optional
/// features delg-gpu uses, the limits that shape its plans, and the tuning
/// table's choice.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    /// lavapipe, llvmpipe, WARP, SwiftShader: the CPU is the device.
    pub cpu_emulation: bool,
    /// llvmpipe's vector width (256 or 512 bits), for llvmpipe only.
    pub llvmpipe_bits: Option<u32>,
    pub shader_f16: bool,
    pub subgroup: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub timestamp_query: bool,
    pub pipeline_cache: bool,
    pub max_storage_buffer_binding_bytes: u64,
    pub max_buffer_bytes: u64,
    pub max_workgroups_per_dimension: u32,
    pub max_invocations_per_workgroup: u32,
    pub max_workgroup_memory_bytes: u32,
    pub max_storage_buffers_per_stage: u32,
    /// The tuning table's choice, e.g. "matmul=tiled-128x128".
    pub tuning: String,
}

impl AdapterReport {
    pub fn new(
        facts: &crate::gpu::AdapterFacts,
        features: wgpu::Features,
        limits: &wgpu::Limits,
        tuning: &Tuning,
    ) -> AdapterReport {
        AdapterReport {
            name: facts.name.clone(),
            backend: format!("{:?}", facts.backend),
            device_type: format!("{:?}", facts.device_type),
            driver: facts.driver.clone(),
            driver_info: facts.driver_info.clone(),
            cpu_emulation: facts.is_cpu_emulation(),
            llvmpipe_bits: llvmpipe_bits(&facts.name),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroup: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: facts.subgroup_min_size,
            subgroup_max_size: facts.subgroup_max_size,
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            pipeline_cache: features.contains(wgpu::Features::PIPELINE_CACHE),
            max_storage_buffer_binding_bytes: limits.max_storage_buffer_binding_size,
            max_buffer_bytes: limits.max_buffer_size,
            max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_workgroup_memory_bytes: limits.max_compute_workgroup_storage_size,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            tuning: tuning.describe(),
        }
    }

    /// The open device's report.
    pub fn of(gpu: &Gpu) -> AdapterReport {
        AdapterReport::new(&gpu.facts, gpu.features, &gpu.limits, &gpu.tuning)
    }

    /// Several lines, the first starting with `prefix`.
    pub fn print(&self, prefix: &str) {
        let yes = |b: bool| if b { "yes" } else { "no" };
        println!(
            "{prefix}{} ({}, {})",
            self.name, self.backend, self.device_type
        );
        println!("    driver: {} {}", self.driver, self.driver_info);
        println!(
            "    features: SHADER_F16 {} | SUBGROUP {} (size {}..{}) | TIMESTAMP_QUERY {} | PIPELINE_CACHE {}",
            yes(self.shader_f16),
            yes(self.subgroup),
            self.subgroup_min_size,
            self.subgroup_max_size,
            yes(self.timestamp_query),
            yes(self.pipeline_cache)
        );
        println!(
            "    limits: storage binding {} MiB | buffer {} MiB | workgroups/dim {} | invocations/workgroup {} | workgroup memory {} KiB | storage buffers/stage {}",
            self.max_storage_buffer_binding_bytes >> 20,
            self.max_buffer_bytes >> 20,
            self.max_workgroups_per_dimension,
            self.max_invocations_per_workgroup,
            self.max_workgroup_memory_bytes >> 10,
            self.max_storage_buffers_per_stage
        );
        if let Some(bits) = self.llvmpipe_bits {
            println!(
                "    llvmpipe vector width: {bits} bits ({})",
                crate::gpu::cpu::width_reason()
            );
        }
        if self.cpu_emulation {
            println!("    cpu (the device): {}", crate::gpu::cpu::describe_cpu());
        }
        println!("    tuning: {}", self.tuning);
    }
}

/// The adapter line of every report, and the CPU beside it: on CPU drivers
/// such as lavapipe the CPU is the device.
pub fn print_adapter(gpu: &Gpu) {
    println!(
        "adapter: {} | backend: {:?} | type: {:?} | driver: {} {}",
        gpu.facts.name,
        gpu.facts.backend,
        gpu.facts.device_type,
        gpu.facts.driver,
        gpu.facts.driver_info
    );
    println!("cpu: {}", crate::gpu::cpu::describe_cpu());
}

pub fn print_header(gpu: &Gpu) {
    print_adapter(gpu);
    print_columns();
}

/// The column titles of `print_row`.
pub fn print_columns() {
    println!(
        "{:<44} {:<28} {:>5} {:>10} {:>9} {:>11} {:>8}",
        "kernel", "variant", "reps", "ms", "GFLOP/s", "GFLOP/CPU-s", "GB/s"
    );
}

pub fn print_row(r: &BenchResult) {
    let cpu = r
        .gflop_per_cpu_s
        .map(|v| format!("{v:.2}"))
        .unwrap_or_else(|| "-".into());
    println!(
        "{:<44} {:<28} {:>5} {:>10.3} {:>9.2} {:>11} {:>8.2}",
        r.name, r.variant, r.reps, r.ms, r.gflops, cpu, r.gbytes
    );
}

/// What `measure_extract` found, per image in the steady state.
#[derive(Clone, Debug, Serialize)]
pub struct ExtractFigures {
    /// "DELG-R50", "DELG-ResNet[1, 1, 1, 1]w8", ...
    pub model: String,
    /// How the backbone stored its weights and activations.
    pub precision: crate::tensor::Precision,
    pub width: u32,
    pub height: u32,
    /// Images per batch (`extract --batch`).
    pub batch: usize,
    /// Timed images (after one warm-up batch): a whole number of batches.
    pub images: usize,
    pub images_per_s: f64,
    pub seconds_per_image: f64,
    pub gflop_per_image: f64,
    pub gflops: f64,
    pub gflop_per_cpu_s: Option<f64>,
    pub host_per_image: crate::gpu::HostWorkPerImage,
    /// Milliseconds per image by stage, JPEG decoding included (each stage
    /// waits for the device on its own, so these sum to more than the
    /// steady state's time per image).
    pub stages_ms: Vec<StageMs>,
    /// Parameters, every cached plan and the kernels' scratch.
    pub device_bytes: u64,
    pub plans_cached: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct StageMs {
    pub stage: String,
    pub ms_per_image: f64,
}

/// A model's name in reports: "DELG-R50", "DOLG-R101", "DELG-ResNet[1, 1, 1, 1]w8".
pub fn model_name(model: &crate::model::ModelConfig) -> String {
    let backbone = model.backbone();
    let depth = match backbone.blocks {
        [3, 4, 6, 3] => "R50".to_string(),
        [3, 4, 23, 3] => "R101".to_string(),
        b => format!("ResNet{b:?}w{}", backbone.width),
    };
    format!("{}-{depth}", model.arch().to_uppercase())
}

/// End-to-end extraction throughput (`bench extract`): `measure_extract`, printed.
pub fn bench_extract(
    gpu: &Arc<Gpu>,
    model: &crate::model::ModelConfig,
    width: u32,
    height: u32,
    images: usize,
    batch: usize,
    precision: crate::tensor::Precision,
) -> Result<ExtractFigures> {
    let figures = measure_extract(gpu, model, width, height, images, batch, precision)?;
    print_extract(&figures);
    Ok(figures)
}

/// A randomly initialised DELG or DOLG model over generated `width`×`height`
/// images with the full recipe of its paper (DELG: 7-scale pyramid, global +
/// local; DOLG: 5 global scales), `batch` images at a time (`images` rounded
/// up to whole batches), after one warm-up batch that pays the pipeline
/// compilation. Then the same number of images again, from JPEG files
/// through the real decoding path, with time by stage, and the device memory
/// the model holds.
pub fn measure_extract(
    gpu: &Arc<Gpu>,
    model: &crate::model::ModelConfig,
    width: u32,
    height: u32,
    images: usize,
    batch: usize,
    precision: crate::tensor::Precision,
) -> Result<ExtractFigures> {
    use crate::jobs::extract::{Extractor, PreparedImage};
    let batch = batch.max(1);
    let images = images.max(1).div_ceil(batch) * batch;
    // measure_extract sets τ itself below, so the stored one does not matter.
    let file = model.random_weights(0, 0.0)?;
    let cfg = crate::jobs::extract::ExtractConfig {
        score_threshold: Some(0.0),
        precision,
        ..crate::jobs::extract::ExtractConfig::for_arch(model.arch())
    };
    let norm = cfg.pixel_norm;
    let mut ex = Extractor::from_weights(
        gpu,
        &file,
        std::path::Path::new("<random weights>"),
        cfg.clone(),
    )?;
    let prepared = |i: u64| -> Result<PreparedImage> {
        let img = crate::jobs::demo::render_scene(i, 0, width.max(height));
        let img = image::imageops::crop_imm(&img, 0, 0, width, height).to_image();
        let data = norm.apply(img.as_raw());
        Ok(PreparedImage {
            pixels: crate::tensor::Tensor::new([1, height as usize, width as usize, 3], data)?,
            resize_factor: (1.0, 1.0),
        })
    };
    // Generating a batch's images is not extraction's work: done before the clocks start.
    let batches = |first: usize| -> Result<Vec<Vec<PreparedImage>>> {
        (0..images / batch)
            .map(|b| {
                (0..batch)
                    .map(|i| prepared((first + b * batch + i) as u64))
                    .collect()
            })
            .collect()
    };
    let warm_up: Vec<PreparedImage> = (0..batch)
        .map(|i| prepared(i as u64))
        .collect::<Result<_>>()?;
    extract_all(&mut ex, &warm_up)?;
    let timed = batches(batch)?;
    let start = Instant::now();
    let cpu0 = cpu_time();
    let host0 = gpu.host_work();
    // As `extract` runs: each batch is submitted before the last one's results are read.
    let mut in_flight = None;
    for group in &timed {
        let group: Vec<_> = group.iter().collect();
        let submitted = ex.submit_batch(&group)?;
        if let Some(previous) = in_flight.replace(submitted) {
            every_image_ok(ex.finish(previous)?)?;
        }
    }
    if let Some(last) = in_flight {
        every_image_ok(ex.finish(last)?)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let host = gpu.host_work() - host0;
    let gflop = ex.flops_per_image(batch, height as usize, width as usize) as f64 / 1e9;
    let cpu = cpu_time().zip(cpu0).map(|(a, b)| (a - b).as_secs_f64());
    let dir = std::env::temp_dir().join(format!("delg-gpu-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let staged = time_stages(&mut ex, &cfg, &dir, (width, height), images, batch);
    let _ = std::fs::remove_dir_all(&dir);
    let times = staged?;
    let stages_ms = times
        .seconds
        .iter()
        .map(|(stage, secs)| StageMs {
            stage: stage.clone(),
            ms_per_image: secs * 1e3 / times.images.max(1) as f64,
        })
        .collect();
    Ok(ExtractFigures {
        model: model_name(model),
        precision,
        width,
        height,
        batch,
        images,
        images_per_s: images as f64 / secs,
        seconds_per_image: secs / images as f64,
        gflop_per_image: gflop,
        gflops: gflop * images as f64 / secs,
        gflop_per_cpu_s: cpu.filter(|c| *c > 0.0).map(|c| gflop * images as f64 / c),
        host_per_image: host.per_image(images),
        stages_ms,
        device_bytes: ex.device_bytes(),
        plans_cached: ex.plans_cached(),
    })
}

/// Extracts `images` (of one size) as one batch; any image's error fails the bench.
fn extract_all(
    ex: &mut crate::jobs::extract::Extractor,
    images: &[crate::jobs::extract::PreparedImage],
) -> Result<()> {
    let group: Vec<_> = images.iter().collect();
    every_image_ok(ex.extract_batch(&group)?)
}

fn every_image_ok(results: Vec<Result<crate::jobs::extract::Extracted>>) -> Result<()> {
    for result in results {
        result?;
    }
    Ok(())
}

pub fn print_extract(f: &ExtractFigures) {
    println!(
        "extract {}x{} {} ({}) at batch {}: {:.3} images/s ({:.2} s/image), {:.1} GFLOP/image, {:.2} GFLOP/s{}",
        f.width,
        f.height,
        f.model,
        f.precision.name(),
        f.batch,
        f.images_per_s,
        f.seconds_per_image,
        f.gflop_per_image,
        f.gflops,
        f.gflop_per_cpu_s
            .map(|v| format!(", {v:.2} GFLOP per CPU-second"))
            .unwrap_or_default()
    );
    print_host_work(&f.host_per_image);
    println!("by stage, ms per image (each stage waits for the device on its own):");
    let total: f64 = f.stages_ms.iter().map(|s| s.ms_per_image).sum();
    for s in &f.stages_ms {
        println!(
            "  {:<36} {:>10.1}  {:>5.1} %",
            s.stage,
            s.ms_per_image,
            100.0 * s.ms_per_image / total
        );
    }
    println!("  {:<36} {:>10.1}", "total", total);
    println!(
        "device memory held (parameters, {} cached plans, conv scratch): {:.1} MiB",
        f.plans_cached,
        f.device_bytes as f64 / (1u64 << 20) as f64
    );
}

/// The host's work per image in the steady state: on a fast GPU this, not
/// the kernels, bounds images/s (issue 17: at most 10 ms of recording CPU).
pub fn print_host_work(h: &crate::gpu::HostWorkPerImage) {
    println!(
        "host work per image: {:.1} submissions ({:.1} before the last one was read), {:.1} bind groups, {:.1} buffers and {:.1} textures created, \
         {:.3} MiB uploaded, {:.1} KiB read back, {:.2} ms CPU recording and submitting (thread clocks)",
        h.submissions,
        h.submissions_overlapped,
        h.bind_groups_created,
        h.buffers_created,
        h.textures_created,
        h.mib_uploaded,
        h.kib_read_back,
        h.record_submit_cpu_ms
    );
}

/// Extracts `images` generated images written as JPEG files into `dir`,
/// decoding them as `extract` does, with the extractor's time by stage on.
fn time_stages(
    ex: &mut crate::jobs::extract::Extractor,
    cfg: &crate::jobs::extract::ExtractConfig,
    dir: &std::path::Path,
    (width, height): (u32, u32),
    images: usize,
    batch: usize,
) -> Result<crate::jobs::extract::StageTimes> {
    ex.timing = Some(Default::default());
    let mut decode = 0.0;
    let mut group = Vec::new();
    for i in 0..images {
        let img = crate::jobs::demo::render_scene(i as u64 + 100, 0, width.max(height));
        let img = image::imageops::crop_imm(&img, 0, 0, width, height).to_image();
        let path = dir.join(format!("{i}.jpg"));
        img.save(&path).map_err(|e| Error::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let t = Instant::now();
        group.push(crate::jobs::extract::prepare_image(&path, cfg, None)?);
        decode += t.elapsed().as_secs_f64();
        if group.len() == batch || i + 1 == images {
            extract_all(ex, &group)?;
            group.clear();
        }
    }
    let mut times = ex.timing.take().unwrap_or_default();
    times
        .seconds
        .insert(0, ("decode (JPEG), resize, normalise".into(), decode));
    // Pipeline order; the backbone's levels keep theirs (the sort is stable).
    let order = [
        "decode",
        "upload",
        "pyramid",
        "backbone",
        "heads",
        "readback",
        "selection",
    ];
    times
        .seconds
        .sort_by_key(|(stage, _)| order.iter().position(|o| stage.starts_with(o)));
    Ok(times)
}

/// `rows` random descriptors of `dim` values, each L2-normalised: the
/// synthetic queries and databases of the search and matching benches.
pub(crate) fn random_unit_rows(rng: &mut Rng, rows: usize, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..rows * dim)
        .map(|_| rng.range(-1.0, 1.0) as f32)
        .collect();
    v.chunks_mut(dim)
        .for_each(crate::jobs::extract::l2_normalize);
    v
}

/// Times one query's neighbour search against a shortlist on both paths
/// (the GPU one after a warm-up call that builds its executable) and
/// checks they found the same nearest neighbours.
pub fn bench_local_matching(
    gpu: &Arc<Gpu>,
    rows: usize,
    db_rows: usize,
    shortlist: usize,
    dim: usize,
) -> Result<()> {
    use crate::jobs::local_match::{LocalMatcher, MatchOn};
    let mut rng = Rng::new(11);
    let query = random_unit_rows(&mut rng, rows, dim);
    let dbs: Vec<Vec<f32>> = (0..shortlist)
        .map(|_| random_unit_rows(&mut rng, db_rows, dim))
        .collect();
    let views: Vec<&[f32]> = dbs.iter().map(Vec::as_slice).collect();
    let mut results = Vec::new();
    for on in [MatchOn::Cpu, MatchOn::Gpu] {
        let mut m = LocalMatcher::new(gpu, on);
        if on == MatchOn::Gpu {
            m.nearest_two(&query, &views[..1], dim)?;
        }
        let t = Instant::now();
        let n = m.nearest_two(&query, &views, dim)?;
        let s = t.elapsed().as_secs_f64();
        let flops = 2.0 * (rows * db_rows * shortlist * dim) as f64;
        println!(
            "{on:?}: {rows} x {shortlist} x {db_rows} descriptors of {dim}: {s:.3} s ({:.1} GFLOP/s)",
            flops / s / 1e9
        );
        results.push(n);
    }
    let differ = results[0]
        .iter()
        .flatten()
        .zip(results[1].iter().flatten())
        .filter(|(a, b)| a.nearest != b.nearest)
        .count();
    println!("nearest neighbours that differ between the paths: {differ}");
    Ok(())
}

/// Global search at scale: `queries` random unit descriptors against `db`
/// random unit descriptors of `dim` dimensions, generated chunk by chunk so
/// the database never has to fit in memory (1 000 000 × 2048 is 8 GiB),
/// keeping the top `k` per query. Returns seconds.
pub fn bench_search(
    gpu: &Arc<Gpu>,
    queries: usize,
    db: usize,
    dim: usize,
    k: usize,
) -> Result<f64> {
    let mut rng = Rng::new(7);
    let q = random_unit_rows(&mut rng, queries, dim);
    let mut search = crate::jobs::search::GlobalSearch::new(gpu, &q, dim, k)?;
    let rows = search.chunk_rows();
    let (mut gen_s, mut search_s) = (0.0, 0.0);
    let mut done = 0;
    while done < db {
        let n = rows.min(db - done);
        let t = Instant::now();
        let chunk = random_unit_rows(&mut rng, n, dim);
        gen_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        search.push(&chunk)?;
        search_s += t.elapsed().as_secs_f64();
        done += n;
    }
    let chunks = db.div_ceil(rows);
    let selected = search.selected_chunks();
    let t = Instant::now();
    let hits = search.finish();
    search_s += t.elapsed().as_secs_f64();
    let flops = 2.0 * queries as f64 * db as f64 * dim as f64;
    println!(
        "search {queries} queries x {db} database x {dim}-d, top {k}: {search_s:.1} s ({:.1} GFLOP/s; chunks of {rows} rows, {selected} of {chunks} merged from device-selected candidates; generating the data took another {gen_s:.1} s); best score of query 0: {:.4}",
        flops / search_s / 1e9,
        hits.first().and_then(|h| h.first()).map(|h| h.score).unwrap_or(0.0)
    );
    Ok(search_s)
}

#[cfg(test)]
mod width_tests {
    use super::llvmpipe_bits;

    #[test]
    fn llvmpipe_width_is_read_from_the_adapter_name() {
        assert_eq!(llvmpipe_bits("llvmpipe (LLVM 15.0.6, 256 bits)"), Some(256));
        assert_eq!(llvmpipe_bits("llvmpipe (LLVM 19.1.7, 512 bits)"), Some(512));
        assert_eq!(llvmpipe_bits("NVIDIA GeForce RTX 4090"), None);
        assert_eq!(llvmpipe_bits("llvmpipe (LLVM 15.0.6, wide bits)"), None);
    }
}

/// f16 against f32 extraction of the same photos (`bench precision`).
#[derive(Clone, Debug, Serialize)]
pub struct PrecisionFigures {
    pub model: String,
    pub images: usize,
    pub worst_global_cosine: f64,
    pub median_global_cosine: f64,
    /// Keypoints of the f32 extraction, over every image.
    pub keypoints: usize,
    /// Share of them with an f16 keypoint at the same scale within 1 px.
    pub found_again: f64,
    /// L2 distance of the (unit) local descriptors of the keypoints found
    /// again: the largest, and the mean over all of them.
    pub descriptor_max: f64,
    pub descriptor_mean: f64,
    /// Device memory held after the run (parameters, cached plans, scratch).
    pub f32_device_bytes: u64,
    pub f16_device_bytes: u64,
    /// Median seconds and process CPU-seconds per image, the two precisions
    /// interleaved image by image so that load changes touch both alike.
    pub f32_seconds_per_image: f64,
    pub f16_seconds_per_image: f64,
    pub f32_cpu_seconds_per_image: Option<f64>,
    pub f16_cpu_seconds_per_image: Option<f64>,
}

/// Extracts every image of `images` with `file`'s model at f32 and at f16
/// (the weights' recipe, τ from `score_threshold` or the file) and measures
/// how far f16 moves the features. The first image of each precision pays
/// the pipeline compilation and is left out of the times.
pub fn compare_precisions(
    gpu: &Arc<Gpu>,
    file: &crate::io::weights::WeightFile,
    images: &[std::path::PathBuf],
    score_threshold: Option<f32>,
) -> Result<PrecisionFigures> {
    use crate::jobs::extract::{agreement, prepare_image, ExtractConfig, Extractor, PreparedImage};
    use crate::tensor::Precision;
    let model = crate::model::ModelConfig::from_metadata(&file.metadata, "<weights>".as_ref())?;
    let cfg = |precision| ExtractConfig {
        score_threshold,
        precision,
        ..ExtractConfig::for_arch(model.arch())
    };
    let name = std::path::Path::new("<weights>");
    let mut full = Extractor::from_weights(gpu, file, name, cfg(Precision::F32))?;
    let mut half = Extractor::from_weights(gpu, file, name, cfg(Precision::F16))?;
    let timed = |ex: &mut Extractor, img: &PreparedImage| -> Result<(_, f64, Option<f64>)> {
        let (t, c) = (Instant::now(), cpu_time());
        let out = ex.extract(img)?;
        let cpu = cpu_time().zip(c).map(|(a, b)| (a - b).as_secs_f64());
        Ok((out, t.elapsed().as_secs_f64(), cpu))
    };
    let (mut cosines, mut wall, mut cpu) = (Vec::new(), [Vec::new(), Vec::new()], [0.0, 0.0]);
    let mut total: Option<crate::jobs::extract::Agreement> = None;
    let mut cpu_known = true;
    for (i, path) in images.iter().enumerate() {
        let prepared = prepare_image(path, &cfg(Precision::F32), None)?;
        let (a, wa, ca) = timed(&mut full, &prepared)?;
        let (b, wb, cb) = timed(&mut half, &prepared)?;
        let m = agreement(&a, &b, 1.0);
        println!(
            "{}: global cosine 1 - {:.2e}, {} of {} keypoints found again, descriptor error max {:.4} mean {:.4}",
            path.display(),
            1.0 - m.global_cosine,
            m.found_again,
            m.keypoints,
            m.descriptor_max,
            m.descriptor_mean
        );
        cosines.push(m.global_cosine);
        total = Some(total.map_or(m, |t| t.combined(&m)));
        if i > 0 {
            wall[0].push(wa);
            wall[1].push(wb);
            match (ca, cb) {
                (Some(ca), Some(cb)) => {
                    cpu[0] += ca;
                    cpu[1] += cb;
                }
                _ => cpu_known = false,
            }
        }
    }
    // NaN sorts last with total_cmp, so a NaN cosine is never the median
    // unnoticed: the worst comes from `combined`, which keeps a NaN.
    let total = total.ok_or_else(|| Error::InvalidArgument("no images to compare".into()))?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            f64::NAN
        } else {
            v[v.len() / 2]
        }
    };
    let timed_images = wall[0].len();
    let per_image_cpu = |c: f64| (cpu_known && timed_images > 0).then(|| c / timed_images as f64);
    Ok(PrecisionFigures {
        model: model_name(&model),
        images: images.len(),
        worst_global_cosine: total.global_cosine,
        median_global_cosine: median(&mut cosines),
        keypoints: total.keypoints,
        found_again: total.found_share(),
        descriptor_max: total.descriptor_max,
        descriptor_mean: total.descriptor_mean,
        f32_device_bytes: full.device_bytes(),
        f16_device_bytes: half.device_bytes(),
        f32_seconds_per_image: median(&mut wall[0]),
        f16_seconds_per_image: median(&mut wall[1]),
        f32_cpu_seconds_per_image: per_image_cpu(cpu[0]),
        f16_cpu_seconds_per_image: per_image_cpu(cpu[1]),
    })
}

pub fn print_precision(f: &PrecisionFigures) {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let cpu = |c: Option<f64>| c.map_or("-".into(), |c| format!("{c:.2}"));
    println!(
        "{} over {} images, f16 against f32:\n  global cosine: worst 1 - {:.2e}, median 1 - {:.2e}\n  \
         keypoints found again within 1 px: {:.2} % of {}\n  descriptor error (L2 of unit descriptors): max {:.4}, mean {:.5}\n  \
         device memory: f32 {:.1} MiB, f16 {:.1} MiB\n  \
         s/image (median): f32 {:.2}, f16 {:.2}; CPU-s/image: f32 {}, f16 {}",
        f.model,
        f.images,
        1.0 - f.worst_global_cosine,
        1.0 - f.median_global_cosine,
        100.0 * f.found_again,
        f.keypoints,
        f.descriptor_max,
        f.descriptor_mean,
        mib(f.f32_device_bytes),
        mib(f.f16_device_bytes),
        f.f32_seconds_per_image,
        f.f16_seconds_per_image,
        cpu(f.f32_cpu_seconds_per_image),
        cpu(f.f16_cpu_seconds_per_image)
    );
}
