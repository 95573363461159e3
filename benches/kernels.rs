//! Criterion benches for the kernels `delg-gpu bench kernels` reports, at
//! sizes that keep `cargo bench` to a few minutes on lavapipe: the GEMMs of
//! the acceptance figures, the ResNet-50 conv4 3×3 convolution and the stem,
//! and the memory-bound ops. Each iteration replays a recorded executable
//! (submit + wait), as the models run.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use delg_gpu::gpu::{Gpu, GpuOptions};
use delg_gpu::graph::exec::{Executable, ParamStore};
use delg_gpu::graph::{Graph, Op};
use delg_gpu::ops::batchnorm::BatchNormTrain;
use delg_gpu::ops::conv2d::{Conv2d, Padding};
use delg_gpu::ops::elementwise::{Unary, UnaryKind};
use delg_gpu::ops::gemm::Matmul;
use delg_gpu::ops::pool::MaxPool;
use delg_gpu::tensor::{Rng, Shape};

fn case(c: &mut Criterion, gpu: &Arc<Gpu>, name: &str, op: impl Op + 'static, inputs: &[&[usize]]) {
    let mut g = Graph::new();
    let shapes: Vec<Shape> = inputs.iter().map(|d| Shape::new(d)).collect();
    let ins: Vec<_> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| g.input(&format!("x{i}"), s.clone()))
        .collect();
    let flops = op.flops(&shapes.iter().collect::<Vec<_>>());
    let outs = g.apply(op, &ins).expect("op");
    let exe = Executable::new(gpu, &g, &outs, &ParamStore::default()).expect("plan");
    let mut rng = Rng::new(1);
    for (t, s) in ins.iter().zip(&shapes) {
        exe.set_input(*t, &rng.tensor(s.clone(), -1.0, 1.0))
            .expect("input");
    }
    exe.run().expect("warm-up");
    let mut group = c.benchmark_group(format!("{} [{}]", name, gpu.tuning.describe()));
    if flops > 0 {
        group.throughput(Throughput::Elements(flops));
    }
    group.sample_size(10);
    group.bench_function("run", |b| b.iter(|| exe.run().expect("run")));
    group.finish();
}

fn kernels(c: &mut Criterion) {
    let Ok(gpu) = Gpu::new(&GpuOptions::default()) else {
        eprintln!("no GPU adapter: nothing to benchmark");
        return;
    };
    case(
        c,
        &gpu,
        "gemm 1024^3",
        Matmul::new(false, false),
        &[&[1024, 1024], &[1024, 1024]],
    );
    case(
        c,
        &gpu,
        "gemm 2048^3",
        Matmul::new(false, false),
        &[&[2048, 2048], &[2048, 2048]],
    );
    case(
        c,
        &gpu,
        "conv 3x3 256->256 64x64",
        Conv2d::new([1, 1], Padding::symmetric(1, 1)),
        &[&[1, 64, 64, 256], &[3, 3, 256, 256]],
    );
    case(
        c,
        &gpu,
        "conv 7x7/2 3->64 512x512",
        Conv2d::new([2, 2], Padding::symmetric(3, 3)),
        &[&[1, 512, 512, 3], &[7, 7, 3, 64]],
    );
    case(
        c,
        &gpu,
        "batchnorm train 1x128x128x256",
        BatchNormTrain { eps: 1e-5 },
        &[&[1, 128, 128, 256], &[256], &[256]],
    );
    case(
        c,
        &gpu,
        "relu 1x128x128x256",
        Unary(UnaryKind::Relu),
        &[&[1, 128, 128, 256]],
    );
    case(
        c,
        &gpu,
        "maxpool 3x3/2 1x256x256x64",
        MaxPool::padded(3, 2, 1),
        &[&[1, 256, 256, 64]],
    );
}

criterion_group!(benches, kernels);
criterion_main!(benches);
