use super::*;
use crate::testing::{check_op, grad_check, OpCase};

fn case(op: Conv2d, x: [usize; 4], k: [usize; 2], cout: usize) -> OpCase {
    let g = op
        .geom(&Shape::new(&x), &Shape::new(&[k[0], k[1], x[3], cout]))
        .expect("valid test geometry");
    let out = [g.n, g.oh, g.ow, g.cout];
    let e = op.epilogue;
    let mut c = OpCase::new(op)
        .input(x, -1.0, 1.0)
        .input([k[0], k[1], x[3], cout], -1.0, 1.0);
    if e.bias {
        c = c.input([cout], -0.5, 0.5);
    }
    if e.scale_shift {
        c = c.input([cout], 0.5, 1.5).input([cout], -0.5, 0.5);
    }
    if e.residual {
        c = c.input(out, -1.0, 1.0);
    }
    c
}

#[test]
fn padding_helpers() {
    // ResNet stem in TF: 224 → 112 with 2 on top and 3 below.
    assert_eq!(
        Padding::same([224, 223], [7, 7], [2, 2], [1, 1]),
        Padding {
            top: 2,
            bottom: 3,
            left: 3,
            right: 3
        }
    );
    assert_eq!(
        Padding::same([9, 9], [3, 3], [1, 1], [6, 6]),
        Padding::symmetric(6, 6)
    );
    assert_eq!(
        Padding::same([4, 4], [1, 1], [2, 2], [1, 1]),
        Padding::default()
    );
    let conv = Conv2d::new([2, 2], Padding::same([225, 7], [7, 3], [2, 2], [1, 1]));
    assert_eq!(conv.output_hw([225, 7], [7, 3]).unwrap(), [113, 4]);
}

#[test]
fn chunk_plan_covers_rows_within_limit() {
    let conv = Conv2d::new(
        [2, 1],
        Padding {
            top: 1,
            bottom: 2,
            left: 0,
            right: 0,
        },
    )
    .dilation([2, 1]);
    let g = conv
        .geom(&Shape::new(&[3, 11, 5, 4]), &Shape::new(&[3, 2, 4, 6]))
        .unwrap();
    for gather in [conv.forward_gather(&g), conv.input_grad_gather(&g)] {
        let (dest, src) = (gather.grid[1] as u64 * 6, gather.src[1] as u64 * 6);
        let whole = plan_chunks(&gather, 3, dest, src, u64::MAX).unwrap();
        assert_eq!(whole.len(), 1);
        let chunks = plan_chunks(&gather, 3, dest, src, 6 * src).unwrap();
        assert!(chunks.len() > 3, "{chunks:?}");
        let mut next = 0;
        for c in &chunks {
            assert_eq!(c.rows.start, next);
            next = c.rows.end;
            assert!(c.rows.len() as u64 * dest <= 6 * src && c.src.len() as u64 * src <= 6 * src);
            for row in c.rows.clone() {
                if let Some((lo, hi)) = gather.source_rows(row % gather.grid[0]) {
                    let base = row / gather.grid[0] * gather.src[0];
                    assert!(
                        c.src.start <= base + lo && base + hi < c.src.end,
                        "{c:?} row {row}"
                    );
                }
            }
        }
        assert_eq!(next, 3 * gather.grid[0]);
        assert!(plan_chunks(&gather, 3, dest, src, 2).is_err());
    }
}

/// Forward cases over every kernel form: (op, x, kernel, c_out).
fn forward_cases() -> Vec<(Conv2d, [usize; 4], [usize; 2], usize)> {
    let asym = Padding {
        top: 1,
        bottom: 2,
        left: 0,
        right: 1,
    };
    // Each distinct epilogue is a pipeline to JIT: the cases share two
    // (bias + ReLU, and all four).
    let full = |c: Conv2d| c.bias().scale_shift().residual().relu();
    let same = Padding::same([9, 10], [3, 3], [1, 1], [2, 2]);
    let atrous = Conv2d::new([1, 1], Padding::symmetric(6, 6))
        .dilation([6, 6])
        .bias()
        .relu();
    vec![
        // Scalar and gathered-A paths: 3, 1 and 5 input channels, odd outputs, a 1×1 output.
        (
            Conv2d::new([2, 2], asym).bias().relu(),
            [2, 7, 9, 3],
            [3, 3],
            5,
        ),
        (
            Conv2d::new([1, 1], Padding::default()).bias().relu(),
            [1, 3, 3, 1],
            [3, 3],
            1,
        ),
        (
            full(Conv2d::new([1, 2], asym).dilation([2, 1])),
            [3, 6, 5, 5],
            [2, 3],
            8,
        ),
        // Texture path (c_in % 8, c_out % 4), dilation 2 and 6.
        (
            full(Conv2d::new([1, 1], same).dilation([2, 2])),
            [2, 9, 10, 16],
            [3, 3],
            12,
        ),
        (atrous, [1, 13, 11, 8], [3, 3], 20),
        (full(Conv2d::new([2, 2], asym)), [2, 8, 7, 24], [1, 1], 36),
    ]
}

#[test]
fn forward_matches_reference() {
    for (op, x, k, cout) in forward_cases() {
        check_op(&case(op, x, k, cout).every_tiled_config());
    }
}

#[test]
fn forward_in_chunks() {
    let op = Conv2d::new([1, 1], Padding::symmetric(1, 1)).bias().relu();
    check_op(
        &case(op, [2, 9, 7, 16], [3, 3], 16)
            .every_tiled_config()
            .windows(3 * 7 * 16),
    );
    let pad = Padding {
        top: 0,
        bottom: 1,
        left: 2,
        right: 1,
    };
    let op = Conv2d::new([2, 2], pad).bias().relu();
    check_op(
        &case(op, [2, 9, 4, 3], [3, 2], 4)
            .every_tiled_config()
            .windows(40),
    );
    // Unfolded RGB-like input, three grid rows of 7 × 32 per chunk.
    let op = Conv2d::new([1, 1], Padding::symmetric(1, 1)).bias().relu();
    check_op(
        &case(op, [2, 9, 7, 3], [3, 3], 8)
            .every_tiled_config()
            .windows(3 * 7 * 32),
    );
}

#[test]
fn gradients() {
    let asym = Padding {
        top: 2,
        bottom: 0,
        left: 1,
        right: 2,
    };
    // Gathered-A and scalar paths, stride 2, odd channels, batch 2.
    grad_check(
        &case(
            Conv2d::new([2, 2], asym).bias().relu(),
            [2, 7, 6, 3],
            [3, 3],
            4,
        )
        .every_tiled_config(),
    );
    grad_check(&case(
        Conv2d::new([2, 1], asym).dilation([2, 2]).bias().relu(),
        [1, 9, 8, 1],
        [3, 2],
        1,
    ));
    // Texture paths: DW with c_in % 4, DX with c_out % 8.
    grad_check(
        &case(
            Conv2d::new([2, 2], asym).dilation([1, 2]).bias().relu(),
            [2, 7, 9, 4],
            [3, 3],
            8,
        )
        .every_tiled_config(),
    );
    grad_check(
        &case(
            Conv2d::new([1, 1], Padding::symmetric(2, 2))
                .dilation([2, 2])
                .bias()
                .relu(),
            [1, 6, 6, 8],
            [3, 3],
            12,
        )
        .every_tiled_config(),
    );
}

#[test]
fn gradients_in_chunks() {
    let op = Conv2d::new(
        [2, 1],
        Padding {
            top: 1,
            bottom: 0,
            left: 1,
            right: 1,
        },
    )
    .bias()
    .relu();
    grad_check(
        &case(op.clone(), [2, 8, 4, 4], [3, 3], 8)
            .every_tiled_config()
            .windows(64),
    );
    grad_check(
        &case(op, [2, 8, 4, 3], [3, 3], 8)
            .every_tiled_config()
            .windows(64),
    );
}

#[test]
fn bias_grad_in_splits_and_chunks() {
    let case = OpCase::new(BiasGrad).input([3, 40, 11, 5], -1.0, 1.0);
    check_op(&case);
    check_op(&case.windows(5 * 1100));
}

#[test]
fn errors_are_typed() {
    let conv = Conv2d::new([1, 1], Padding::default());
    let err = conv
        .infer(&[&Shape::new(&[1, 5, 5, 3]), &Shape::new(&[3, 3, 4, 8])])
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = conv
        .infer(&[&Shape::new(&[1, 2, 5, 3]), &Shape::new(&[3, 3, 3, 8])])
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = Conv2d::new([0, 1], Padding::default())
        .infer(&[&Shape::new(&[1, 5, 5, 3]), &Shape::new(&[1, 1, 3, 8])])
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let fused = Conv2d::new([1, 1], Padding::default()).scale_shift();
    let mut g = Graph::new();
    let ins = [
        g.input("x", [1, 3, 3, 2]),
        g.param("w", [1, 1, 2, 4]),
        g.param("s", [4]),
        g.param("t", [4]),
    ];
    let y = g.apply1(fused, &ins).unwrap();
    let err = g.backward(&[(y, y)], &ins[..1]).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

/// The aligned and the odd-channel cases of the tests above run the texture forms.
#[test]
fn aligned_shapes_use_textures() {
    let Some(gpu) = crate::testing::test_gpus()
        .iter()
        .find(|g| g.tuning.matmul.broadcast_lanes().is_some())
    else {
        return;
    };
    let labels =
        |op: &dyn Op, shapes: &[&[usize]]| crate::testing::dispatch_labels(gpu, op, shapes);
    let conv = Conv2d::new(
        [2, 2],
        Padding {
            top: 2,
            bottom: 0,
            left: 1,
            right: 2,
        },
    )
    .dilation([1, 2]);
    // 16 channels: whole subgroup steps at 8 and at 16 lanes.
    let fwd = labels(&conv, &[&[2, 7, 9, 16], &[3, 3, 16, 8]]);
    let dx = labels(
        &Conv2dInputGrad {
            conv: conv.clone(),
            input_hw: [7, 9],
        },
        &[&[2, 4, 4, 16], &[3, 3, 16, 4]],
    );
    let dw = labels(
        &Conv2dWeightGrad {
            conv,
            kernel: [3, 3],
        },
        &[&[2, 7, 9, 4], &[2, 4, 4, 8]],
    );
    for (what, l) in [("forward", fwd), ("dx", dx), ("dw", dw)] {
        assert!(
            l.iter()
                .all(|l| l.contains("TEX=1") && !l.contains("ASCALAR")),
            "{what}: {l:?}"
        );
    }
    // The RGB stem: the forward product unfolded, then vec4 texels; its
    // weight gradient gathers scalars.
    let conv = Conv2d::new([2, 2], Padding::symmetric(3, 3));
    let stem = labels(&conv, &[&[1, 9, 9, 3], &[7, 7, 3, 8]]);
    assert!(stem[0].contains("unfold"), "{stem:?}");
    assert!(
        stem[1..]
            .iter()
            .all(|l| l.contains("TEX=1") && !l.contains("ASCALAR")),
        "{stem:?}"
    );
    // The f16 stem: unfolded in f16 (read in place), then rgba16float texels.
    let half = crate::testing::dispatch_labels_as(
        gpu,
        &conv.clone().stored(Precision::F16),
        &[&[1, 9, 9, 3], &[7, 7, 3, 8]],
        &[Precision::F16; 2],
    );
    assert!(
        half[0].contains("unfold") && half[0].contains("F16=1") && !half[0].contains("ASCALAR"),
        "{half:?}"
    );
    assert!(
        half[1..]
            .iter()
            .all(|l| l.contains("TEX=1") && l.contains("F16=1") && !l.contains("ASCALAR")),
        "{half:?}"
    );
    let dw = Conv2dWeightGrad {
        conv,
        kernel: [7, 7],
    };
    let dw = labels(&dw, &[&[1, 9, 9, 3], &[1, 5, 5, 8]]);
    assert!(dw.iter().all(|l| l.contains("ASCALAR=1")), "{dw:?}");
}

#[test]
fn flops_count_multiply_adds_twice() {
    let conv = Conv2d::new([1, 1], Padding::symmetric(1, 1));
    assert_eq!(
        conv.flops(&[
            &Shape::new(&[1, 64, 64, 256]),
            &Shape::new(&[3, 3, 256, 256])
        ]),
        2 * 64 * 64 * 256 * 9 * 256
    );
}

/// The TF stem at 2048×2048: a 256 MiB output, twice one binding, so it
/// runs in chunks at the real device limit. Checks sampled outputs.
#[test]
#[ignore]
fn stem_2048_chunked() {
    let Some(gpu) = crate::testing::test_gpu() else {
        return;
    };
    let mut rng = crate::tensor::Rng::new(11);
    let pad = Padding::same([2048, 2048], [7, 7], [2, 2], [1, 1]);
    let op = Conv2d::new([2, 2], pad).bias().relu();
    let x = rng.tensor([1, 2048, 2048, 3], -1.0, 1.0);
    let w = rng.tensor([7, 7, 3, 64], -0.2, 0.2);
    let b = rng.tensor([64], -0.1, 0.1);
    let t = std::time::Instant::now();
    let y = crate::graph::exec::run_op(&gpu, std::sync::Arc::new(op.clone()), &[&x, &w, &b])
        .unwrap()
        .remove(0);
    eprintln!("{:?} in {:.1} s", y.shape, t.elapsed().as_secs_f64());
    let g = op.geom(&x.shape, &w.shape).unwrap();
    let mut worst = 0f64;
    for _ in 0..2000 {
        let (oy, ox, co) = (rng.below(g.oh), rng.below(g.ow), rng.below(64));
        let mut want = b.data[co] as f64;
        for ky in 0..7 {
            for kx in 0..7 {
                let (iy, ix) = (
                    (oy * 2 + ky) as i64 - pad.top as i64,
                    (ox * 2 + kx) as i64 - pad.left as i64,
                );
                if iy < 0 || ix < 0 || iy >= 2048 || ix >= 2048 {
                    continue;
                }
                for ci in 0..3 {
                    want += x.data[g.in_index(0, iy as usize, ix as usize) + ci] as f64
                        * w.data[g.w_index(ky, kx) + ci * 64 + co] as f64;
                }
            }
        }
        let got = y.data[g.out_index(0, oy, ox) + co] as f64;
        worst = worst.max((got - want.max(0.0)).abs());
    }
    assert!(worst < 1e-4, "worst sampled error {worst}");
}

#[test]
fn profile_labels_name_kernel_stride_and_channels() {
    let s = |d: &[usize]| Shape::new(d);
    let strided = Conv2d::new([2, 2], Padding::symmetric(1, 1));
    assert_eq!(
        strided.profile_label(&[&s(&[1, 9, 7, 5]), &s(&[3, 3, 5, 6])]),
        "conv2d 3x3/2 5->6"
    );
    let dilated = Conv2d {
        dilation: [6, 6],
        ..Conv2d::new([1, 1], Padding::symmetric(6, 6))
    };
    assert_eq!(
        dilated.profile_label(&[&s(&[1, 13, 13, 4]), &s(&[3, 3, 4, 2])]),
        "conv2d 3x3/1 dilation 6 4->2"
    );
    // The gradients say which convolution they differentiate.
    let dx = Conv2dInputGrad {
        conv: strided.clone(),
        input_hw: [9, 7],
    };
    assert_eq!(
        dx.profile_label(&[&s(&[1, 5, 4, 6]), &s(&[3, 3, 6, 5])]),
        "conv2d_input_grad 3x3/2 5->6"
    );
    let dw = Conv2dWeightGrad {
        conv: strided,
        kernel: [3, 3],
    };
    assert_eq!(
        dw.profile_label(&[&s(&[1, 9, 7, 5]), &s(&[1, 5, 4, 6])]),
        "conv2d_weight_grad 3x3/2 5->6"
    );
    // A shape the op rejects still gets its name.
    let flat = Conv2d::new([2, 2], Padding::default());
    assert_eq!(
        flat.profile_label(&[&s(&[1, 4]), &s(&[3, 3, 5, 6])]),
        "conv2d"
    );
}

#[test]
fn one_channel_1x1_is_a_matrix_vector_product() {
    // The attention logits: a 1×1 convolution to one channel, with and
    // without a bias, on odd maps, whole and in windows of 3 pixels.
    let plain = Conv2d::new([1, 1], Padding::default());
    let biased = plain.clone().bias();
    let geom = |op: &Conv2d, x: [usize; 4]| op.geom(&Shape::new(&x), &Shape::new(&[1, 1, x[3], 1]));
    for op in [&plain, &biased] {
        assert!(op.is_row_dot(&geom(op, [2, 5, 7, 13]).unwrap()));
    }
    check_op(&case(biased.clone(), [2, 5, 7, 13], [1, 1], 1));
    check_op(&case(biased.clone(), [2, 5, 7, 13], [1, 1], 1).windows(3 * 13));
    check_op(&case(plain, [1, 3, 4, 9], [1, 1], 1));
    // A ReLU, a stride or a second channel keep the implicit GEMM.
    let relu = biased.clone().relu();
    assert!(!relu.is_row_dot(&geom(&relu, [1, 3, 4, 9]).unwrap()));
    check_op(&case(relu, [1, 3, 4, 9], [1, 1], 1));
    let strided = Conv2d::new([2, 2], Padding::default()).bias();
    assert!(!strided.is_row_dot(&geom(&strided, [1, 3, 4, 9]).unwrap()));
    assert!(!biased.is_row_dot(
        &biased
            .geom(&Shape::new(&[1, 3, 4, 9]), &Shape::new(&[1, 1, 9, 2]))
            .unwrap()
    ));
}

/// `case` with x, w and the residual stored in f16 (bias, scale and shift
/// stay f32), as the backbone of an f16 extraction stores them.
fn half_case(op: Conv2d, x: [usize; 4], k: [usize; 2], cout: usize) -> OpCase {
    let residual = op.epilogue.residual.then_some(op.input_count() - 1);
    let mut c = case(op.stored(Precision::F16), x, k, cout)
        .stored(0, Precision::F16)
        .stored(1, Precision::F16);
    if let Some(r) = residual {
        c = c.stored(r, Precision::F16);
    }
    // The reference sees the f16-rounded operands, sums exactly and rounds y
    // once to f16. The kernels sum in f32 (error ~k·2^-24, negligible) and
    // round once on store, to either f16 neighbour (WGSL allows both): at
    // most one f16 step, 2^-10 of |y| ≤ the largest |y|. Summing in f16
    // instead would be off by ~√k steps (k = 144 here: ~1e-2), and storing
    // in f32 would read back as garbage.
    c.tol(1.1e-3, 0.0)
}

#[test]
fn f16_forward_matches_a_reference_that_rounds_like_the_device() {
    // The f32 cases: odd channels with whole vec4s of outputs are unfolded
    // in f16 on the broadcast kernels (others take the scalar broadcast
    // form: f16 has no gathered texture form), whole texels the rgba16float
    // texture form; then chunks of three grid rows, whose f16 windows shift
    // by 2-byte elements.
    for (op, x, k, cout) in forward_cases() {
        check_op(&half_case(op, x, k, cout).every_tiled_config());
    }
    // The DELG stem: RGB, 7×7/2 with TF "same" padding on odd sizes, the
    // folded batch norm and ReLU; whole and in chunks of three grid rows of
    // unfolded f16 rows.
    let pad = Padding::same([11, 9], [7, 7], [2, 2], [1, 1]);
    let stem = Conv2d::new([2, 2], pad).bias().scale_shift().relu();
    check_op(&half_case(stem.clone(), [2, 11, 9, 3], [7, 7], 8));
    check_op(&half_case(stem, [2, 11, 9, 3], [7, 7], 8).windows(3 * 5 * 160));
    let op = Conv2d::new([1, 1], Padding::symmetric(1, 1)).bias().relu();
    check_op(
        &half_case(op, [2, 9, 7, 16], [3, 3], 16)
            .every_tiled_config()
            .windows(3 * 7 * 16),
    );
    let op = Conv2d::new([2, 2], Padding::symmetric(1, 0))
        .bias()
        .scale_shift()
        .residual();
    check_op(
        &half_case(op, [2, 9, 4, 3], [3, 2], 4)
            .every_tiled_config()
            .windows(40),
    );
}

#[test]
fn f16_convolutions_refuse_f32_operands_and_training() {
    let mut g = Graph::new();
    let x = g.input("x", [1, 3, 3, 2]);
    let w = g.param_as("w", [1, 1, 2, 4], Precision::F16);
    let half = Conv2d::new([1, 1], Padding::default()).stored(Precision::F16);
    let err = g.apply1(half.clone(), &[x, w]).unwrap_err();
    assert!(
        err.to_string().contains("input 0 is stored in f32"),
        "{err}"
    );
    let x = g
        .apply1(crate::ops::cast::Cast { to: Precision::F16 }, &[x])
        .unwrap();
    let y = g.apply1(half, &[x, w]).unwrap();
    assert_eq!(g.precision(y), Precision::F16);
    let err = g.backward(&[(y, y)], &[w]).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

#[test]
fn a_bias_before_a_training_batch_norm_has_exactly_zero_gradient() {
    use crate::graph::reference::eval_reference;
    use crate::ops::batchnorm::BatchNormTrain;
    use crate::tensor::Rng;
    // x → conv + bias → batch norm (training) → ReLU, differentiated with
    // the f64 references, once summing dy for the bias and once filling zeros.
    let gradients = |cancelled: bool| {
        let mut g = Graph::new();
        let x = g.input("x", [2, 7, 5, 3]);
        let w = g.input("w", [3, 3, 3, 6]);
        let b = g.input("b", [6]);
        let gamma = g.input("gamma", [6]);
        let beta = g.input("beta", [6]);
        let mut conv = Conv2d::new([2, 1], Padding::symmetric(1, 1)).bias();
        if cancelled {
            conv = conv.bias_before_batch_norm();
        }
        let y = g.apply1(conv, &[x, w, b]).unwrap();
        let out = g
            .apply(BatchNormTrain::new(1e-5).relu(), &[y, gamma, beta])
            .unwrap();
        let seed = g.input("seed", g.shape(out[0]).clone());
        let grads = g.backward(&[(out[0], seed)], &[w, b]).unwrap();
        let (dw, db) = (grads[0].unwrap(), grads[1].unwrap());
        let kinds: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
        let mut rng = Rng::new(21);
        let mut values = std::collections::HashMap::new();
        for t in [x, w, b, gamma, beta, seed] {
            let shape = g.shape(t).dims().to_vec();
            values.insert(t, rng.tensor(shape, -1.0, 1.0).to_ref());
        }
        eval_reference(&g, &[dw, db], &mut values).unwrap();
        let has_sum = kinds.contains(&"conv2d_bias_grad");
        (values[&dw].data.clone(), values[&db].data.clone(), has_sum)
    };
    let (dw_sum, db_sum, summed) = gradients(false);
    let (dw_fill, db_fill, summed_again) = gradients(true);
    assert!(summed && !summed_again, "the flag replaces the column sum");
    let scale = db_sum.len() as f64 * 2.0 * 4.0 * 5.0;
    assert!(
        db_sum.iter().all(|v| v.abs() < 1e-12 * scale),
        "summed, the bias gradient is zero up to rounding: {db_sum:?}"
    );
    assert!(db_fill.iter().all(|&v| v == 0.0));
    assert_eq!(dw_sum, dw_fill, "the weight gradient is untouched");
}
