//! A ResNet-50 stem at 2048×2048: its conv output is 64×1024×1024 f32 =
//! 256 MiB, twice the 128 MiB storage-binding limit of lavapipe and WebGPU
//! defaults. It must run through conv, batch norm, ReLU and max-pool with the
//! right result. Ignored by default (about a minute on lavapipe):
//!
//!     cargo test --release --test large_activation -- --ignored --nocapture

use delg_gpu::graph::exec::{Executable, ParamStore};
use delg_gpu::graph::Graph;
use delg_gpu::ops::batchnorm::BatchNormTrain;
use delg_gpu::ops::conv2d::{Conv2d, Padding};
use delg_gpu::ops::elementwise::{Unary, UnaryKind};
use delg_gpu::ops::pool::MaxPool;
use delg_gpu::tensor::{Rng, Tensor};
use delg_gpu::testing::test_gpu;

#[test]
#[ignore]
fn stem_at_2048_pixels() {
    let Some(gpu) = test_gpu() else { return };
    let (h, c_out) = (2048usize, 64usize);
    let mut g = Graph::new();
    let x = g.input("x", [1, h, h, 3]);
    let w = g.input("w", [7, 7, 3, c_out]);
    let gamma = g.input("gamma", [c_out]);
    let beta = g.input("beta", [c_out]);
    let conv = g
        .apply1(Conv2d::new([2, 2], Padding::symmetric(3, 3)), &[x, w])
        .unwrap();
    let bn = g
        .apply(BatchNormTrain::new(1e-5), &[conv, gamma, beta])
        .unwrap();
    let relu = g.apply1(Unary(UnaryKind::Relu), &[bn[0]]).unwrap();
    let pool = g.apply1(MaxPool::padded(3, 2, 1), &[relu]).unwrap();
    assert_eq!(g.shape(conv).bytes(), 256 << 20);

    let mut rng = Rng::new(11);
    let xv = rng.tensor([1, h, h, 3], -1.0, 1.0);
    let wv = rng.tensor([7, 7, 3, c_out], -0.1, 0.1);
    let gv = rng.tensor([c_out], 0.5, 1.5);
    let bv = rng.tensor([c_out], -0.2, 0.2);
    let exe = Executable::new(&gpu, &g, &[conv, relu, pool], &ParamStore::default()).unwrap();
    for (t, v) in [(x, &xv), (w, &wv), (gamma, &gv), (beta, &bv)] {
        exe.set_input(t, v).unwrap();
    }
    let t = std::time::Instant::now();
    exe.run().unwrap();
    eprintln!("stem forward at 2048²: {:.2} s", t.elapsed().as_secs_f64());
    let conv_out = exe.read(conv).unwrap();
    let relu_out = exe.read(relu).unwrap();
    let pool_out = exe.read(pool).unwrap();
    let oh = h / 2;

    // Conv at sampled pixels, spread over both halves of the tensor.
    let at =
        |t: &Tensor<f32>, y: usize, xx: usize, c: usize, w: usize| t.data[(y * w + xx) * c_out + c];
    for s in 0..400 {
        let (y, xx, c) = (rng.below(oh), rng.below(oh), rng.below(c_out));
        let y = if s % 2 == 0 { y } else { oh - 1 - y / 8 };
        let mut want = 0f64;
        for ky in 0..7 {
            for kx in 0..7 {
                let (iy, ix) = ((2 * y + ky) as isize - 3, (2 * xx + kx) as isize - 3);
                if iy < 0 || ix < 0 || iy >= h as isize || ix >= h as isize {
                    continue;
                }
                for ci in 0..3 {
                    want += xv.data[(iy as usize * h + ix as usize) * 3 + ci] as f64
                        * wv.data[((ky * 7 + kx) * 3 + ci) * c_out + c] as f64;
                }
            }
        }
        let got = at(&conv_out, y, xx, c, oh) as f64;
        assert!(
            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "conv at ({y},{xx},{c}): {got} vs {want}"
        );
    }
    // Batch norm + ReLU everywhere, from statistics of the device's conv output.
    let n = (oh * oh) as f64;
    for c in 0..c_out {
        let vals = conv_out
            .data
            .iter()
            .skip(c)
            .step_by(c_out)
            .map(|&v| v as f64);
        let mean = vals.clone().sum::<f64>() / n;
        let var = vals.map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let inv = 1.0 / (var + 1e-5).sqrt();
        for (i, (&cv, &rv)) in conv_out
            .data
            .iter()
            .zip(&relu_out.data)
            .enumerate()
            .skip(c)
            .step_by(c_out * 97)
        {
            let want = ((cv as f64 - mean) * inv * gv.data[c] as f64 + bv.data[c] as f64).max(0.0);
            assert!(
                (rv as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "bn+relu at {i}: {rv} vs {want}"
            );
        }
    }
    // Max-pool everywhere on a strided sample of outputs.
    let ph = oh / 2;
    for i in (0..ph * ph * c_out).step_by(101) {
        let (y, xx, c) = (i / c_out / ph, i / c_out % ph, i % c_out);
        let mut want = f32::NEG_INFINITY;
        for dy in 0..3 {
            for dx in 0..3 {
                let (iy, ix) = ((2 * y + dy) as isize - 1, (2 * xx + dx) as isize - 1);
                if iy >= 0 && ix >= 0 && (iy as usize) < oh && (ix as usize) < oh {
                    want = want.max(at(&relu_out, iy as usize, ix as usize, c, oh));
                }
            }
        }
        assert_eq!(pool_out.data[i], want, "max-pool at ({y},{xx},{c})");
    }
}
