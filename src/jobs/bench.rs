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
        ms: median * 1e3,
        gflops: flops / median / 1e9,
        gflop_per_cpu_s: cpu
            .filter(|c| *c > 0.0)
            .map(|c| flops * times.len() as f64 / c / 1e9),
        gbytes: bytes as f64 / median / 1e9,
    })
}

/// The kernel cases: every distinct convolution of ResNet-50 (torchvision
/// layout) on a 1024×1024 image, the GEMMs of the acceptance figures, and the
/// memory-bound ops at activation sizes of the same network.
pub fn kernel_cases() -> Vec<BenchCase> {
    use crate::ops::batchnorm::BatchNormTrain;
    use crate::ops::conv2d::{Conv2d, Conv2dInputGrad, Conv2dWeightGrad, Padding};
    use crate::ops::elementwise::{Binary, BinaryKind, Unary, UnaryKind};
    use crate::ops::gemm::Matmul;
    use crate::ops::pool::MaxPool;
    let mut cases = vec![
        BenchCase::new(
            "gemm 1024x1024x1024",
            Matmul::new(false, false),
            &[&[1024, 1024], &[1024, 1024]],
        ),
        BenchCase::new(
            "gemm 2048x2048x2048",
            Matmul::new(false, false),
            &[&[2048, 2048], &[2048, 2048]],
        ),
    ];
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
    let (x, w): (&[usize], &[usize]) = (&[1, 64, 64, 256], &[3, 3, 256, 256]);
    cases.push(BenchCase::new(
        "conv 3x3/1 256->256 64x64 input grad",
        Conv2dInputGrad {
            conv: conv.clone(),
            input_hw: [64, 64],
        },
        &[x, w],
    ));
    cases.push(BenchCase::new(
        "conv 3x3/1 256->256 64x64 weight grad",
        Conv2dWeightGrad {
            conv,
            kernel: [3, 3],
        },
        &[x, x],
    ));
    let act: &[usize] = &[1, 256, 256, 256];
    cases.push(BenchCase::new(
        "batchnorm train 1x256x256x256",
        BatchNormTrain { eps: 1e-5 },
        &[act, &[256], &[256]],
    ));
    cases.push(BenchCase::new(
        "relu 1x256x256x256",
        Unary(UnaryKind::Relu),
        &[act],
    ));
    cases.push(BenchCase::new(
        "add 1x256x256x256",
        Binary::new(BinaryKind::Add),
        &[act, act],
    ));
    cases.push(BenchCase::new(
        "maxpool 3x3/2 1x512x512x64",
        MaxPool::valid(3, 2),
        &[&[1, 512, 512, 64]],
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
    let mut gpus = Gpu::every_variant(opts)?;
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
    for case in kernel_cases() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        for gpu in &gpus {
            let r = run_case(gpu, &case, reps, budget)?;
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                print_row(&r);
            }
        }
    }
    match other_width {
        Some(bits) => rerun_at_width(bits, "--both-widths"),
        None => Ok(()),
    }
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
        let info = a.get_info();
        let l = a.limits();
        let f = a.features();
        let has = |x: wgpu::Features| if f.contains(x) { "yes" } else { "no" };
        println!(
            "[{i}] {} ({:?}, {:?})",
            info.name, info.backend, info.device_type
        );
        println!("    driver: {} {}", info.driver, info.driver_info);
        println!(
            "    features: SHADER_F16 {} | SUBGROUP {} (size {}..{}) | TIMESTAMP_QUERY {}",
            has(wgpu::Features::SHADER_F16),
            has(wgpu::Features::SUBGROUP),
            info.subgroup_min_size,
            info.subgroup_max_size,
            has(wgpu::Features::TIMESTAMP_QUERY)
        );
        println!(
            "    limits: storage binding {} MiB | buffer {} MiB | workgroups/dim {} | invocations/workgroup {} | workgroup memory {} KiB | storage buffers/stage {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroups_per_dimension,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_storage_buffers_per_shader_stage
        );
        if let Some(bits) = llvmpipe_bits(&info.name) {
            println!(
                "    llvmpipe vector width: {bits} bits ({})",
                crate::gpu::cpu::width_reason()
            );
        }
        let facts = crate::gpu::AdapterFacts::from(&info);
        let tuning = Tuning::for_adapter(&facts, f & crate::gpu::device::OPTIONAL_FEATURES);
        println!("    tuning: {}", tuning.describe());
    }
    Ok(())
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

/// End-to-end extraction throughput: a randomly initialised DELG or DOLG
/// model over generated `width`×`height` images with the full recipe of its
/// paper (DELG: 7-scale pyramid, global + local; DOLG: 5 global scales),
/// after one warm-up image that pays the pipeline compilation. Then the same
/// number of images again, from JPEG files through the real decoding path,
/// with time by stage, and the device memory the model holds.
pub fn bench_extract(
    gpu: &Arc<Gpu>,
    model: &crate::model::ModelConfig,
    width: u32,
    height: u32,
    images: usize,
) -> Result<(f64, f64)> {
    use crate::jobs::extract::{Extractor, PreparedImage};
    let backbone = model.backbone();
    // bench_extract sets τ itself below, so the stored one does not matter.
    let file = model.random_weights(0, 0.0)?;
    let cfg = crate::jobs::extract::ExtractConfig {
        score_threshold: Some(0.0),
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
    ex.extract(&prepared(0)?)?;
    let start = Instant::now();
    let cpu0 = cpu_time();
    let host0 = gpu.host_work();
    for i in 0..images {
        ex.extract(&prepared(i as u64 + 1)?)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let host = gpu.host_work() - host0;
    let gflop = ex.flops_per_image(height as usize, width as usize) as f64 / 1e9;
    let cpu = cpu_time().zip(cpu0).map(|(a, b)| (a - b).as_secs_f64());
    println!(
        "extract {}x{} {}-{}: {:.3} images/s ({:.2} s/image), {:.1} GFLOP/image, {:.2} GFLOP/s{}",
        width,
        height,
        model.arch().to_uppercase(),
        match backbone.blocks {
            [3, 4, 6, 3] => "R50".to_string(),
            [3, 4, 23, 3] => "R101".to_string(),
            b => format!("ResNet{b:?}w{}", backbone.width),
        },
        images as f64 / secs,
        secs / images as f64,
        gflop,
        gflop * images as f64 / secs,
        cpu.map(|c| format!(", {:.2} GFLOP per CPU-second", gflop * images as f64 / c))
            .unwrap_or_default()
    );
    print_host_work(&host, images);
    let dir = std::env::temp_dir().join(format!("delg-gpu-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::File {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    let staged = time_stages(&mut ex, &cfg, &dir, width, height, images);
    let _ = std::fs::remove_dir_all(&dir);
    let times = staged?;
    println!("by stage, ms per image (each stage waits for the device on its own):");
    let total: f64 = times.seconds.iter().map(|(_, s)| s).sum();
    for (stage, secs) in &times.seconds {
        println!(
            "  {stage:<36} {:>10.1}  {:>5.1} %",
            secs * 1e3 / times.images as f64,
            100.0 * secs / total
        );
    }
    println!(
        "  {:<36} {:>10.1}",
        "total",
        total * 1e3 / times.images as f64
    );
    println!(
        "device memory held (parameters, {} cached plans, conv scratch): {:.1} MiB",
        ex.plans_cached(),
        ex.device_bytes() as f64 / (1u64 << 20) as f64
    );
    Ok((images as f64 / secs, gflop))
}

/// The host's work per image in the steady state: on a fast GPU this, not
/// the kernels, bounds images/s (issue 17: at most 10 ms of recording CPU).
fn print_host_work(host: &crate::gpu::HostWork, images: usize) {
    let per = |n: u64| n as f64 / images as f64;
    println!(
        "host work per image: {:.1} submissions, {:.1} bind groups, {:.1} buffers and {:.1} textures created, \
         {:.3} MiB uploaded, {:.1} KiB read back, {:.2} ms CPU recording and submitting (thread clocks)",
        per(host.submissions),
        per(host.bind_groups),
        per(host.buffers),
        per(host.textures),
        per(host.bytes_uploaded) / (1u64 << 20) as f64,
        per(host.bytes_read_back) / 1024.0,
        host.record_submit_cpu.as_secs_f64() * 1e3 / images as f64
    );
}

/// Extracts `images` generated images written as JPEG files into `dir`,
/// decoding them as `extract` does, with the extractor's time by stage on.
fn time_stages(
    ex: &mut crate::jobs::extract::Extractor,
    cfg: &crate::jobs::extract::ExtractConfig,
    dir: &std::path::Path,
    width: u32,
    height: u32,
    images: usize,
) -> Result<crate::jobs::extract::StageTimes> {
    ex.timing = Some(Default::default());
    let mut decode = 0.0;
    for i in 0..images {
        let img = crate::jobs::demo::render_scene(i as u64 + 100, 0, width.max(height));
        let img = image::imageops::crop_imm(&img, 0, 0, width, height).to_image();
        let path = dir.join(format!("{i}.jpg"));
        img.save(&path).map_err(|e| Error::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let t = Instant::now();
        let prepared = crate::jobs::extract::prepare_image(&path, cfg, None)?;
        decode += t.elapsed().as_secs_f64();
        ex.extract(&prepared)?;
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
    let mut unit = |n: usize| {
        let mut v: Vec<f32> = (0..n * dim).map(|_| rng.range(-1.0, 1.0) as f32).collect();
        v.chunks_mut(dim)
            .for_each(crate::jobs::extract::l2_normalize);
        v
    };
    let query = unit(rows);
    let dbs: Vec<Vec<f32>> = (0..shortlist).map(|_| unit(db_rows)).collect();
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
    let unit_rows = |rng: &mut Rng, rows: usize| -> Vec<f32> {
        let mut v: Vec<f32> = (0..rows * dim)
            .map(|_| rng.range(-1.0, 1.0) as f32)
            .collect();
        for r in v.chunks_mut(dim) {
            crate::jobs::extract::l2_normalize(r);
        }
        v
    };
    let mut rng = Rng::new(7);
    let q = unit_rows(&mut rng, queries);
    let mut search = crate::jobs::search::GlobalSearch::new(gpu, &q, dim, k)?;
    let rows = search.chunk_rows();
    let (mut gen_s, mut search_s) = (0.0, 0.0);
    let mut done = 0;
    while done < db {
        let n = rows.min(db - done);
        let t = Instant::now();
        let chunk = unit_rows(&mut rng, n);
        gen_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        search.push(&chunk)?;
        search_s += t.elapsed().as_secs_f64();
        done += n;
    }
    let t = Instant::now();
    let hits = search.finish();
    search_s += t.elapsed().as_secs_f64();
    let flops = 2.0 * queries as f64 * db as f64 * dim as f64;
    println!(
        "search {queries} queries x {db} database x {dim}-d, top {k}: {search_s:.1} s ({:.1} GFLOP/s; chunks of {rows} rows; generating the data took another {gen_s:.1} s); best score of query 0: {:.4}",
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
