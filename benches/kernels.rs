//! Criterion benches over a few of the cases `delg-gpu bench kernels` reports
//! (the same `kernel_cases`), chosen to keep `cargo bench` to a few minutes
//! on lavapipe: the GEMMs of the acceptance figures, the conv4 3×3 forward
//! and backward, the stem, and the memory-bound ops. Each iteration replays
//! the recorded executable (submit + wait), as the models run.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use delg_gpu::gpu::{Gpu, GpuOptions};
use delg_gpu::jobs::bench::kernel_cases;

const CASES: &[&str] = &[
    "gemm 1024x1024x1024",
    "gemm 2048x2048x2048",
    "conv 3x3/1 256->256 64x64",
    "conv 3x3/1 256->256 64x64 input grad",
    "conv 3x3/1 256->256 64x64 weight grad",
    "conv 7x7/2 3->64 1024x1024",
    "batchnorm train 1x256x256x256",
    "relu 1x256x256x256",
    "maxpool 3x3/2 1x512x512x64",
];

fn kernels(c: &mut Criterion) {
    let gpu = match Gpu::new(&GpuOptions::default()) {
        Ok(gpu) => gpu,
        Err(e) => panic!("no GPU adapter to benchmark: {e}"),
    };
    let cases = kernel_cases(1024);
    for name in CASES {
        let case = cases
            .iter()
            .find(|c| c.name == *name)
            .unwrap_or_else(|| panic!("no bench case named '{name}'"));
        let (exe, _) = case.prepare(&gpu).expect("plan");
        let mut group = c.benchmark_group(format!("{} [{}]", case.name, gpu.tuning.describe()));
        if case.flops() > 0 {
            group.throughput(Throughput::Elements(case.flops()));
        }
        group.sample_size(10);
        group.bench_function("run", |b| b.iter(|| exe.run().expect("run")));
        group.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
