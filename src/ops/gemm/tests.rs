use super::*;
use crate::gpu::RecordStats;
use crate::tensor::{HostTensor, Rng};
use crate::testing::{assert_close, check_op, grad_check, test_gpus, tiled_config_gpus, OpCase};

const FLAGS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

/// Stored shapes of A and B for op(A) = m×k and op(B) = k×n.
fn stored(op: Matmul, m: usize, n: usize, k: usize) -> ([usize; 2], [usize; 2]) {
    let a = if op.trans_a { [k, m] } else { [m, k] };
    let b = if op.trans_b { [n, k] } else { [k, n] };
    (a, b)
}

fn case(op: Matmul, m: usize, n: usize, k: usize, bias: bool) -> OpCase {
    let (a, b) = stored(op, m, n, k);
    let c = OpCase::new(op).input(a, -1.0, 1.0).input(b, -1.0, 1.0);
    if bias {
        c.input([n], -1.0, 1.0)
    } else {
        c
    }
}

#[test]
fn matmul_matches_reference_on_edge_sizes() {
    // Sizes that are not multiples of any tile, K = 1, M = 1, N = 1, and
    // several workgroups in both directions; the last two in whole vec4s
    // (the tiled kernels' vec4 staging) with a partial last K step. Every
    // tiled config runs them.
    for (ta, tb) in FLAGS {
        let op = Matmul::new(ta, tb);
        for (i, (m, n, k)) in [
            (1, 1, 1),
            (1, 5, 3),
            (7, 1, 9),
            (37, 19, 13),
            (130, 70, 1),
            (33, 133, 17),
            (36, 20, 28),
            (132, 68, 36),
        ]
        .into_iter()
        .enumerate()
        {
            check_op(&case(op, m, n, k, i % 2 == 1).every_tiled_config());
        }
    }
}

#[test]
fn matmul_flattens_leading_dimensions() {
    // A batch of NHWC pixels times a weight matrix: a 1×1 convolution.
    let op = Matmul::default();
    let c = OpCase::new(op)
        .input([2, 3, 5, 7], -1.0, 1.0)
        .input([7, 6], -1.0, 1.0)
        .input([6], -1.0, 1.0);
    assert_eq!(
        op.infer(&[&c.inputs[0].shape, &c.inputs[1].shape, &c.inputs[2].shape])
            .unwrap(),
        vec![Shape::new(&[2, 3, 5, 6])]
    );
    check_op(&c);
    // Aᵀ·B over flattened rows: the weight gradient of that convolution.
    let op = Matmul::new(true, false);
    check_op(
        &OpCase::new(op)
            .input([2, 3, 4], -1.0, 1.0)
            .input([2, 3, 5], -1.0, 1.0),
    );
}

/// Runs `record` on every test device and compares with `want`, returning
/// each device's variant and recording statistics.
fn run_with(
    inputs: &[&HostTensor],
    out_shape: Shape,
    want: &RefTensor,
    record: impl Fn(&mut Recorder, &[&DeviceTensor], &DeviceTensor) -> Result<()>,
) -> Vec<(MatmulVariant, RecordStats)> {
    let mut counts = Vec::new();
    for gpu in test_gpus().iter().chain(&tiled_config_gpus(None)) {
        let ins: Vec<DeviceTensor> = inputs
            .iter()
            .map(|t| DeviceTensor::upload(gpu, t).unwrap())
            .collect();
        let out = DeviceTensor::zeros(gpu, out_shape.clone()).unwrap();
        let mut rec = Recorder::new(gpu);
        record(&mut rec, &ins.iter().collect::<Vec<_>>(), &out).unwrap();
        counts.push((gpu.tuning.matmul, rec.run().unwrap()));
        assert_close(
            &format!("chunked ({})", gpu.tuning.describe()),
            &out.download(gpu).unwrap(),
            want,
            1e-4,
        );
    }
    counts
}

/// Random operands of op(A)·op(B) for op(A) = m×k and op(B) = k×n, with a
/// bias if asked, and their reference product.
fn random_product(
    op: Matmul,
    [m, n, k]: [usize; 3],
    bias: bool,
    seed: u64,
) -> (Vec<HostTensor>, RefTensor) {
    let (sa, sb) = stored(op, m, n, k);
    let mut rng = Rng::new(seed);
    let mut ins = vec![rng.tensor(sa, -1.0, 1.0), rng.tensor(sb, -1.0, 1.0)];
    if bias {
        ins.push(rng.tensor([n], -1.0, 1.0));
    }
    let refs: Vec<RefTensor> = ins.iter().map(|t| t.to_ref()).collect();
    let want = op
        .reference(&refs.iter().collect::<Vec<_>>())
        .unwrap()
        .remove(0);
    (ins, want)
}

#[test]
fn chunked_products_match_reference() {
    // Tiny windows and textures force splits of M, N and K (with
    // accumulation), windows with shifts, and texture reuse. The second
    // case has the layout the subgroup variant copies instead of packing
    // (rows of 64 floats, K in whole subgroup steps), with a last M-chunk shorter
    // than the texture so that stale rows of the previous chunk remain.
    let small = Limits {
        window: 4000,
        texture_dim: 256,
        texture_budget: 2048,
        sum_block: 4,
    };
    let copyable = Limits {
        window: 1 << 20,
        texture_dim: 16384,
        texture_budget: 8192,
        sum_block: 4,
    };
    for (lim, (m, n, k)) in [(small, (150, 200, 45)), (copyable, (300, 128, 192))] {
        for (ta, tb) in FLAGS {
            let op = Matmul::new(ta, tb);
            let (ins, want) = random_product(op, [m, n, k], true, 7);
            let stats = run_with(
                &ins.iter().collect::<Vec<_>>(),
                want.shape.clone(),
                &want,
                |rec, ins, out| {
                    let shapes: Vec<&Shape> = ins.iter().map(|t| &t.shape).collect();
                    rec.gpu()
                        .reserve_scratch(&op.scratch_with(rec.gpu(), &shapes, lim)?)?;
                    op.record_with(rec, ins, out, lim)
                },
            );
            for (variant, st) in stats {
                let sgb = variant.broadcast_lanes().is_some();
                if lim.window == small.window {
                    assert!(
                        st.dispatches >= 10,
                        "{variant:?}: expected many chunks, got {st:?}"
                    );
                } else if sgb && !ta && !tb {
                    // 3 K-chunks × 2 M-chunks (256 + 44 rows), all 3 + 6
                    // operand blocks copied.
                    assert_eq!((st.dispatches, st.copies), (6, 9), "{variant:?}");
                }
            }
        }
    }
}

#[test]
fn matmul_gradients() {
    for (ta, tb) in FLAGS {
        grad_check(&case(Matmul::new(ta, tb), 5, 3, 4, true).every_tiled_config());
    }
    let op = Matmul::default();
    grad_check(
        &OpCase::new(op)
            .input([2, 3, 4], -1.0, 1.0)
            .input([4, 5], -1.0, 1.0)
            .input([5], -1.0, 1.0),
    );
    grad_check(
        &OpCase::new(Matmul::new(true, false))
            .input([2, 3, 4], -1.0, 1.0)
            .input([2, 3, 5], -1.0, 1.0),
    );
}

#[test]
fn column_sum_and_broadcast() {
    for shape in [vec![1usize, 1], vec![7, 3], vec![2, 300, 5], vec![1000, 1]] {
        check_op(&OpCase::new(ColumnSum).input(shape.clone(), -1.0, 1.0));
        let n = shape[shape.len() - 1];
        check_op(
            &OpCase::new(BroadcastRows {
                shape: Shape(shape),
            })
            .input([n], -1.0, 1.0),
        );
    }
    grad_check(&OpCase::new(ColumnSum).input([6, 5], -1.0, 1.0));
    grad_check(
        &OpCase::new(BroadcastRows {
            shape: Shape::new(&[3, 2, 5]),
        })
        .input([5], -1.0, 1.0),
    );
}

#[test]
fn chunked_column_sum_and_broadcast() {
    // 10 row chunks of 25 blocks each, then three more tree levels.
    let lim = Limits {
        window: 300,
        texture_dim: 256,
        texture_budget: 2048,
        sum_block: 4,
    };
    let x = Rng::new(3).tensor([1000, 3], -1.0, 1.0);
    let want = ColumnSum.reference(&[&x.to_ref()]).unwrap().remove(0);
    let counts = run_with(&[&x], Shape::new(&[3]), &want, |rec, ins, out| {
        rec.gpu()
            .reserve_scratch(&ColumnSum.scratch_with(&ins[0].shape, lim)?)?;
        ColumnSum.record_with(rec, ins[0], out, lim)
    });
    assert!(
        counts.iter().all(|(_, st)| st.dispatches == 14),
        "{counts:?}"
    );

    let op = BroadcastRows {
        shape: Shape::new(&[37, 3]),
    };
    let v = Rng::new(4).tensor([3], -1.0, 1.0);
    let want = op.reference(&[&v.to_ref()]).unwrap().remove(0);
    let counts = run_with(&[&v], op.shape.clone(), &want, |rec, ins, out| {
        op.record_with(rec, ins[0], out, 10)
    });
    assert!(
        counts.iter().all(|(_, st)| st.dispatches == 13),
        "{counts:?}"
    );
}

#[test]
fn bad_shapes_are_typed_errors() {
    let s = |d: &[usize]| Shape::new(d);
    let mm = Matmul::default();
    let err = mm.infer(&[&s(&[2, 3]), &s(&[4, 5])]).unwrap_err();
    assert!(
        matches!(err, Error::Shape { .. }) && err.to_string().contains("inner dimensions differ"),
        "{err}"
    );
    let err = mm.infer(&[&s(&[2, 3]), &s(&[3, 5]), &s(&[4])]).unwrap_err();
    assert!(err.to_string().contains("bias must be [5]"), "{err}");
    assert!(mm.infer(&[&s(&[3]), &s(&[3, 5])]).is_err());
    assert!(mm.infer(&[&s(&[0, 3]), &s(&[3, 5])]).is_err());
    assert!(Matmul::new(true, true)
        .infer(&[&s(&[3, 2]), &s(&[5, 3])])
        .is_ok());
    assert!(ColumnSum.infer(&[&s(&[4])]).is_err());
    assert!(BroadcastRows { shape: s(&[4, 3]) }
        .infer(&[&s(&[4])])
        .is_err());
}

/// Named after the llvmpipe loop cap it pins: a K of 70 000 once summed
/// to 45 587 in the tiled kernel.
#[test]
fn long_reductions_are_complete() {
    let k = 70_000usize;
    let a = Tensor::new([k, 3], (0..k * 3).map(|i| (i % 7) as f32 - 3.0).collect()).unwrap();
    let b = Tensor::new([k, 2], (0..k * 2).map(|i| (i % 5) as f32 - 2.0).collect()).unwrap();
    check_op(&OpCase::new(Matmul::new(true, false)).tensor(a).tensor(b));
}

#[test]
fn flops_are_two_mnk() {
    let mm = Matmul::default();
    assert_eq!(
        mm.flops(&[&Shape::new(&[2, 3, 5, 7]), &Shape::new(&[7, 6])]),
        matmul_flops(30, 6, 7)
    );
    assert_eq!(matmul_flops(30, 6, 7), 2 * 30 * 6 * 7);
    assert_eq!(
        Matmul::new(true, false).flops(&[&Shape::new(&[7, 30]), &Shape::new(&[7, 6])]),
        2 * 30 * 6 * 7
    );
}

#[test]
fn matrix_vector_products_take_the_row_kernel() {
    // M = 1 with B stored [N, K] (DOLG's FC layers at batch 1) and N = 1 with
    // A stored [M, K], with and without a bias, in windows of two rows: one
    // dispatch per window and nothing packed.
    let lim = Limits {
        window: 80,
        texture_dim: 256,
        texture_budget: 2048,
        sum_block: 4,
    };
    for (ta, tb, m, n, k) in [
        (false, true, 1, 45, 37),
        (true, true, 1, 45, 37),
        (false, false, 53, 1, 29),
        (false, true, 53, 1, 29),
    ] {
        let op = Matmul::new(ta, tb);
        let (sa, sb) = stored(op, m, n, k);
        let rows = (m * n) as u64;
        assert_eq!(
            op.shape(&[&Shape::new(&sa), &Shape::new(&sb)])
                .unwrap()
                .row_dot(),
            Some((m == 1, rows))
        );
        for bias in [false, true] {
            let (ins, want) = random_product(op, [m, n, k], bias, 11);
            let stats = run_with(
                &ins.iter().collect::<Vec<_>>(),
                want.shape.clone(),
                &want,
                |rec, ins, out| op.record_with(rec, ins, out, lim),
            );
            for (variant, st) in stats {
                let windows = rows.div_ceil(lim.window / k as u64) as usize;
                assert_eq!((st.dispatches, st.copies), (windows, 0), "{variant:?}");
            }
        }
    }
    // Rows longer than one invocation may loop over, and products with two
    // rows and two columns, keep the tiled kernels.
    let long = GemmShape {
        d: Dims {
            m: 1,
            n: 3,
            k: ROW_DOT_MAX_K + 1,
        },
        ta: false,
        tb: true,
    };
    assert_eq!(long.row_dot(), None);
    check_op(&case(
        Matmul::new(false, true),
        1,
        3,
        ROW_DOT_MAX_K as usize + 1,
        true,
    ));
    for (ta, tb) in FLAGS {
        let two = Matmul::new(ta, tb).shape(&[&Shape::new(&[2, 2]), &Shape::new(&[2, 2])]);
        assert_eq!(two.unwrap().row_dot(), None);
    }
}
