use super::*;
use crate::tensor::{HostTensor, Rng};
use crate::testing::{check_op, grad_check, OpCase};

fn bn_case(shape: &[usize], lo: f64, hi: f64) -> OpCase {
    bn_case_of(BatchNormTrain::new(1e-5), shape, lo, hi)
}

fn bn_case_of(op: BatchNormTrain, shape: &[usize], lo: f64, hi: f64) -> OpCase {
    let c = *shape.last().unwrap();
    OpCase::new(op)
        .input(shape.to_vec(), lo, hi)
        .input([c], 0.5, 1.5)
        .input([c], -1.0, 1.0)
}

#[test]
fn column_plans_cover_every_row_in_whole_blocks() {
    let p = col_plan(10_000_000, 64, 1 << 20).unwrap();
    assert_eq!(p.row_block, 9766);
    assert_eq!(p.nblocks, 1024);
    assert_eq!(p.window_rows % p.row_block, 0);
    assert!(p.window_rows * 64 <= 1 << 20);
    let small = col_plan(7, 3, 1 << 20).unwrap();
    assert_eq!((small.row_block, small.nblocks), (64, 1));
    // Wide rows: the block shrinks to fit a window and partials stay bounded.
    let wide = col_plan(5000, 4096, 1 << 16).unwrap();
    assert_eq!(wide.row_block, 16);
    assert!(wide.nblocks * 4096 <= 2 * PARTIAL_BUDGET);
    assert!(matches!(
        col_plan(3, 100, 64),
        Err(Error::LimitExceeded { .. })
    ));
}

#[test]
fn batchnorm_train_matches_reference() {
    check_op(&bn_case(&[2, 1], -1.0, 1.0));
    check_op(&bn_case(&[2, 3, 5, 7], -2.0, 2.0));
    // Offset data: the two-pass variance must not cancel.
    check_op(&bn_case(&[3, 67, 5], 100.0, 101.0));
    check_op(&bn_case(&[1, 9, 9, 130], -3.0, 1.0));
    // Channels in fours (the VEC4 kernels): 3 lanes' worth, so 21 lane
    // groups share a workgroup; and 66 lanes' worth over two tiles.
    check_op(&bn_case(&[3, 67, 12], 100.0, 101.0));
    check_op(&bn_case(&[2, 5, 7, 264], -3.0, 1.0));
}

#[test]
fn batchnorm_train_over_many_windows_and_blocks() {
    // Windows of 1000 elements: 5 channels → windows of 192 rows (3 blocks of 64).
    check_op(&bn_case(&[2, 19, 23, 5], 10.0, 12.0).windows(1000));
    grad_check(&bn_case(&[2, 13, 11, 5], -1.0, 1.0).windows(1000));
    // In fours: windows of 125 rows start 40 elements into a binding.
    check_op(&bn_case(&[2, 19, 23, 8], 10.0, 12.0).windows(1000));
    grad_check(&bn_case(&[2, 13, 11, 8], -1.0, 1.0).windows(1000));
    check_op(
        &OpCase::new(ChannelAffine::affine())
            .input([700, 3], -1.0, 1.0)
            .input([3], -2.0, 2.0)
            .input([3], -1.0, 1.0),
    );
    grad_check(
        &OpCase::new(ChannelAffine::affine())
            .input([333, 5], -1.0, 1.0)
            .input([5], -2.0, 2.0)
            .input([5], -1.0, 1.0),
    );
}

#[test]
fn batchnorm_train_is_accurate_over_millions_of_rows() {
    // |μ| ≫ σ over 2M rows: f32 block sums alone would misplace the mean by ~1e-3.
    check_op(&bn_case(&[1000, 2000, 3], 1000.0, 1001.0));
    // An outlier first row: the origin of the shifted Welford pass.
    let mut case = bn_case(&[600_000, 3], 1000.0, 1001.0);
    case.inputs[0].data[..3].fill(0.0);
    check_op(&case);
}

/// Tensors larger than one 128 MiB binding, with the device's real windows
/// (slow on lavapipe: `cargo test --lib -- --ignored beyond_one_binding`).
#[test]
#[ignore]
fn batchnorm_beyond_one_binding() {
    check_op(&bn_case(&[2, 520, 520, 64], -1.0, 3.0));
    let mut rng = Rng::new(11);
    let x = rng.tensor([2, 520, 520, 64], -1.0, 3.0);
    let dy = rng.tensor([2, 520, 520, 64], -1.0, 1.0);
    check_op(&grad_case(1e-5, false, x, dy));
}

/// BatchNormGrad (without statistic gradients) at x's batch statistics;
/// with `relu_mask` the mask input is still to be added.
fn grad_case(eps: f32, relu_mask: bool, x: HostTensor, dy: HostTensor) -> OpCase {
    let (mean, var) = ref_moments(&x.to_ref());
    let c = *x.shape.dims().last().unwrap();
    let op = BatchNormGrad {
        eps,
        stat_grads: false,
        relu_mask,
    };
    OpCase::new(op)
        .tensor(x)
        .input([c], 0.5, 1.5)
        .tensor(vector(mean).to_host())
        .tensor(vector(var).to_host())
        .tensor(dy)
}

#[test]
fn batchnorm_gradients() {
    grad_check(&bn_case(&[2, 7], -1.0, 1.0));
    grad_check(&bn_case(&[3, 5, 3], -2.0, 2.0));
    grad_check(&bn_case(&[2, 3, 5, 65], 1.0, 3.0));
    grad_check(&bn_case(&[2, 3, 5, 68], 1.0, 3.0));
}

#[test]
fn batchnorm_grad_without_stat_gradients() {
    let mut g = Graph::new();
    let x = g.input("x", [3, 11, 5]);
    let gamma = g.input("gamma", [5]);
    let beta = g.input("beta", [5]);
    let out = g
        .apply(BatchNormTrain::new(1e-3), &[x, gamma, beta])
        .unwrap();
    let seed = g.input("seed", [3, 11, 5]);
    let grads = g.backward(&[(out[0], seed)], &[x, gamma, beta]).unwrap();
    assert!(grads.iter().all(Option::is_some));
    let node = g.nodes.last().unwrap();
    assert_eq!(node.op.name(), "batchnorm_grad");
    assert_eq!(node.inputs.len(), 5);
    let mut rng = Rng::new(3);
    let x = rng.tensor([3, 11, 5], -1.0, 1.0);
    let dy = rng.tensor([3, 11, 5], -1.0, 1.0);
    check_op(&grad_case(1e-3, false, x, dy));
}

/// A batch norm with its fused epilogue; the residual input comes last.
fn fused_case(op: BatchNormTrain, shape: &[usize]) -> OpCase {
    let case = bn_case_of(op, shape, -2.0, 2.0);
    if op.residual {
        case.input(shape.to_vec(), -1.0, 1.0)
    } else {
        case
    }
}

fn fused_variants() -> [BatchNormTrain; 3] {
    let bn = BatchNormTrain::new(1e-5);
    [bn.relu(), bn.residual(), bn.residual().relu()]
}

#[test]
fn batchnorm_with_fused_relu_and_residual_matches_reference() {
    for op in fused_variants() {
        check_op(&fused_case(op, &[2, 3, 5, 7]));
        check_op(&fused_case(op, &[3, 67, 5]));
        check_op(&fused_case(op, &[1, 9, 9, 130]));
        // Several windows of rows (5 channels → 192 rows each).
        check_op(&fused_case(op, &[2, 19, 23, 5]).windows(1000));
        check_op(&fused_case(op, &[3, 67, 12]));
        check_op(&fused_case(op, &[2, 19, 23, 8]).windows(1000));
    }
    // The ReLU clips: about half the outputs are exactly zero.
    let case = fused_case(BatchNormTrain::new(1e-5).relu(), &[4, 33, 3]);
    let ins: Vec<RefTensor> = case.inputs.iter().map(|t| t.to_ref()).collect();
    let y = case.op.reference(&ins.iter().collect::<Vec<_>>()).unwrap();
    let zeros = y[0].data.iter().filter(|&&v| v == 0.0).count();
    assert!(zeros > y[0].data.len() / 4 && y[0].data.iter().all(|&v| v >= 0.0));
}

#[test]
fn batchnorm_with_fused_relu_and_residual_gradients() {
    for op in fused_variants() {
        grad_check(&fused_case(op, &[3, 5, 3]));
        grad_check(&fused_case(op, &[2, 3, 5, 65]));
        grad_check(&fused_case(op, &[2, 13, 11, 5]).windows(1000));
        grad_check(&fused_case(op, &[2, 3, 5, 68]));
    }
}

#[test]
fn relu_gradient_rides_on_the_batchnorm_backward() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 9, 7]);
    let gamma = g.input("gamma", [7]);
    let beta = g.input("beta", [7]);
    let out = g
        .apply(BatchNormTrain::new(1e-5).relu(), &[x, gamma, beta])
        .unwrap();
    let seed = g.input("seed", [2, 9, 7]);
    g.backward(&[(out[0], seed)], &[x, gamma, beta]).unwrap();
    let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
    assert_eq!(
        names,
        ["batchnorm_train", "batchnorm_grad"],
        "no separate ReLU pass"
    );
    assert_eq!(
        g.nodes[1].inputs.last(),
        Some(&out[0]),
        "masked by the output"
    );
    // The masked backward alone, without statistic gradients, on a mask that
    // is zero at about half the elements, and dy NaN at one masked element.
    let mut rng = Rng::new(5);
    let x = rng.tensor([3, 11, 5], -1.0, 1.0);
    let mut mask = rng.tensor([3, 11, 5], -1.0, 1.0);
    mask.data.iter_mut().for_each(|v| *v = v.max(0.0));
    let mut dy = rng.tensor([3, 11, 5], -1.0, 1.0);
    let hidden = mask.data.iter().position(|&v| v == 0.0).unwrap();
    dy.data[hidden] = f32::NAN;
    check_op(&grad_case(1e-3, true, x, dy).tensor(mask));
}

#[test]
fn batchnorm_bad_shapes_are_errors() {
    let op = BatchNormTrain::new(1e-5);
    let s = |d: &[usize]| Shape::new(d);
    let err = op.infer(&[&s(&[4, 3]), &s(&[4]), &s(&[3])]).unwrap_err();
    assert!(
        matches!(err, Error::Shape { .. }) && err.to_string().contains("gamma"),
        "{err}"
    );
    let err = op
        .infer(&[&s(&[1, 1, 1, 3]), &s(&[3]), &s(&[3])])
        .unwrap_err();
    assert!(err.to_string().contains("at least 2 rows"), "{err}");
    let err = BatchNormTrain::new(-1.0)
        .infer(&[&s(&[4, 3]), &s(&[3]), &s(&[3])])
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let grad = BatchNormGrad {
        eps: 1e-5,
        stat_grads: false,
        relu_mask: false,
    };
    let err = grad
        .infer(&[&s(&[4, 3]), &s(&[3]), &s(&[3]), &s(&[3]), &s(&[4, 2])])
        .unwrap_err();
    assert!(err.to_string().contains("dy"), "{err}");
    let err = BatchNormTrain::new(1e-5)
        .residual()
        .infer(&[&s(&[4, 3]), &s(&[3]), &s(&[3]), &s(&[4, 2])])
        .unwrap_err();
    assert!(err.to_string().contains("residual"), "{err}");
    let masked = BatchNormGrad {
        relu_mask: true,
        ..grad
    };
    let (x, v) = (s(&[4, 3]), s(&[3]));
    let err = masked
        .infer(&[&x, &v, &v, &v, &x, &s(&[4, 2])])
        .unwrap_err();
    assert!(err.to_string().contains("ReLU mask"), "{err}");
    assert!(masked.infer(&[&x, &v, &v, &v, &x]).is_err());
}

#[test]
fn running_update_matches_reference() {
    for op in [
        BatchNormRunningUpdate::pytorch(30),
        BatchNormRunningUpdate::keras(0.99, 2),
    ] {
        let case = OpCase::new(op)
            .input([67], -1.0, 1.0)
            .input([67], 0.5, 2.0)
            .input([67], -1.0, 1.0)
            .input([67], 0.1, 3.0);
        check_op(&case);
    }
    let keras = BatchNormRunningUpdate::keras(0.99, 8);
    assert!((keras.momentum - 0.01).abs() < 1e-6 && !keras.unbiased);
    let out = BatchNormRunningUpdate::pytorch(5)
        .reference(&[
            &vector(vec![1.0]),
            &vector(vec![1.0]),
            &vector(vec![2.0]),
            &vector(vec![4.0]),
        ])
        .unwrap();
    assert!((out[0].data[0] - 1.1).abs() < 1e-7);
    assert!((out[1].data[0] - (0.9 + 0.1 * 4.0 * 5.0 / 4.0)).abs() < 1e-7);
}

#[test]
fn running_update_mutates_state_in_a_graph() {
    let mut g = Graph::new();
    let x = g.input("x", [4, 3]);
    let gamma = g.input("gamma", [3]);
    let beta = g.input("beta", [3]);
    let rm = g.input("running_mean", [3]);
    let rv = g.input("running_var", [3]);
    let out = g
        .apply(BatchNormTrain::new(1e-5), &[x, gamma, beta])
        .unwrap();
    let upd = g
        .apply(
            BatchNormRunningUpdate::pytorch(4),
            &[rm, rv, out[1], out[2]],
        )
        .unwrap();
    assert!(upd.is_empty());
    let mut rng = Rng::new(1);
    let mut values = std::collections::HashMap::new();
    for (t, shape) in [
        (x, vec![4, 3]),
        (gamma, vec![3]),
        (beta, vec![3]),
        (rm, vec![3]),
        (rv, vec![3]),
    ] {
        values.insert(t, rng.tensor(shape, 0.5, 1.5).to_ref());
    }
    let before = values[&rv].clone();
    crate::graph::reference::eval_reference(&g, &[out[0]], &mut values).unwrap();
    let (_, var) = ref_moments(&values[&x]);
    let want = 0.9 * before.data[1] + 0.1 * var[1] * 4.0 / 3.0;
    // The momentum is an f32: 0.1 is off by ~1e-9.
    assert!((values[&rv].data[1] - want).abs() < 1e-7);
}

#[test]
fn running_update_bad_shapes_are_errors() {
    let op = BatchNormRunningUpdate::pytorch(10);
    let s = Shape::new(&[4]);
    let err = op.infer(&[&s, &s, &Shape::new(&[5]), &s]).unwrap_err();
    assert!(err.to_string().contains("batch_mean"), "{err}");
    let err = BatchNormRunningUpdate::pytorch(1)
        .infer(&[&s, &s, &s, &s])
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

#[test]
fn channel_affine_matches_reference() {
    for shape in [vec![1usize], vec![2, 3, 5, 7], vec![3, 17, 130]] {
        let c = *shape.last().unwrap();
        check_op(
            &OpCase::new(ChannelAffine::affine())
                .input(shape.clone(), -2.0, 2.0)
                .input([c], -2.0, 2.0)
                .input([c], -1.0, 1.0),
        );
        check_op(
            &OpCase::new(ChannelAffine::bias())
                .input(shape, -2.0, 2.0)
                .input([c], -1.0, 1.0),
        );
    }
    check_op(&OpCase::new(ChannelSum).input([5, 67, 3], -1.0, 1.0));
    check_op(
        &OpCase::new(ChannelAffineGrad)
            .input([9, 65], -1.0, 1.0)
            .input([65], -1.0, 1.0)
            .input([9, 65], -1.0, 1.0),
    );
}

#[test]
fn channel_affine_gradients() {
    grad_check(
        &OpCase::new(ChannelAffine::affine())
            .input([2, 3, 5, 7], -2.0, 2.0)
            .input([7], -2.0, 2.0)
            .input([7], -1.0, 1.0),
    );
    grad_check(
        &OpCase::new(ChannelAffine::bias())
            .input([3, 67, 3], -2.0, 2.0)
            .input([3], -1.0, 1.0),
    );
    grad_check(
        &OpCase::new(ChannelAffine::affine())
            .input([1], -2.0, 2.0)
            .input([1], -2.0, 2.0)
            .input([1], -1.0, 1.0),
    );
}

#[test]
fn channel_affine_bad_shapes_are_errors() {
    let err = ChannelAffine::affine()
        .infer(&[&Shape::new(&[4, 3]), &Shape::new(&[3]), &Shape::new(&[4])])
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = ChannelAffine::bias()
        .infer(&[&Shape::new(&[4, 3]), &Shape::new(&[3]), &Shape::new(&[3])])
        .unwrap_err();
    assert!(err.to_string().contains("takes 2 inputs"), "{err}");
    let err = ChannelSum.infer(&[&Shape::new(&[4, 0])]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}

#[test]
fn folded_batchnorm_equals_inference_batchnorm() {
    let mut rng = Rng::new(7);
    let c = 5;
    let v = |rng: &mut Rng, lo, hi| rng.tensor([c], lo, hi).data;
    let (gamma, beta, mean, var) = (
        v(&mut rng, 0.5, 1.5),
        v(&mut rng, -1.0, 1.0),
        v(&mut rng, -3.0, 3.0),
        v(&mut rng, 0.1, 2.0),
    );
    let eps = 1e-3;
    let (scale, shift) = fold_batchnorm(&gamma, &beta, &mean, &var, eps).unwrap();
    let x = rng.tensor([4, c], -5.0, 5.0).to_ref();
    let ins = [
        &x,
        &vector(scale.iter().map(|&s| s as f64).collect()),
        &vector(shift.iter().map(|&s| s as f64).collect()),
    ];
    let got = ChannelAffine::affine().reference(&ins).unwrap();
    for (i, (&xv, &y)) in x.data.iter().zip(&got[0].data).enumerate() {
        let ch = i % c;
        let want = (xv - mean[ch] as f64) / (var[ch] as f64 + eps as f64).sqrt() * gamma[ch] as f64
            + beta[ch] as f64;
        assert!((y - want).abs() < 1e-5, "{i}: {y} vs {want}");
    }
    assert!(fold_batchnorm(&gamma, &beta, &mean[..4], &var, eps).is_err());
}
