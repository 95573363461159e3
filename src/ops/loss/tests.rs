use std::sync::Arc;

use super::*;
use crate::graph::exec::run_op;
use crate::tensor::{HostTensor, Rng};
use crate::testing::{check_op, grad_check, test_gpu, OpCase};

fn labels(rng: &mut Rng, b: usize, c: usize) -> HostTensor {
    Tensor {
        shape: Shape::new(&[b]),
        data: (0..b).map(|_| rng.below(c) as f32).collect(),
    }
}

/// Cosines in (−0.95, 0.95) (acos is smooth there) with labels; `label_cos`
/// overrides the label column (to reach θ > π − m).
fn cosines(b: usize, c: usize, seed: u64, label_cos: Option<f32>) -> (HostTensor, HostTensor) {
    let mut rng = Rng::new(seed);
    let mut x = rng.tensor([b, c], -0.95, 0.95);
    let l = labels(&mut rng, b, c);
    if let Some(v) = label_cos {
        for r in 0..b {
            x.data[r * c + l.data[r] as usize] = v;
        }
    }
    (x, l)
}

fn xent_case(
    op: impl Op + 'static,
    b: usize,
    c: usize,
    seed: u64,
    label_cos: Option<f32>,
) -> OpCase {
    let (x, l) = cosines(b, c, seed, label_cos);
    OpCase::new(op).tensor(x).tensor(l)
}

const DELG: ArcFaceLoss = ArcFaceLoss {
    scale: ArcFaceScale::Fixed(45.25),
    margin: 0.1,
    fallback: MarginFallback::Keep,
    curricular: false,
};
const DOLG: ArcFaceLoss = ArcFaceLoss {
    scale: ArcFaceScale::Fixed(30.0),
    margin: 0.15,
    fallback: MarginFallback::Penalty,
    curricular: false,
};
const CURRICULAR: ArcFaceLoss = ArcFaceLoss {
    curricular: true,
    ..DOLG
};
const LEARNED: ArcFaceLoss = ArcFaceLoss {
    scale: ArcFaceScale::Input,
    margin: 0.1,
    fallback: MarginFallback::Keep,
    curricular: false,
};

fn gamma(v: f32) -> HostTensor {
    Tensor {
        shape: scalar_shape(),
        data: vec![v],
    }
}

#[test]
fn cross_entropy_matches_reference() {
    for (b, c) in [(1, 1), (1, 5), (3, 7), (4, 257), (2, 81313)] {
        let mut rng = Rng::new(b as u64 * 31 + c as u64);
        let case = OpCase::new(SoftmaxCrossEntropy)
            .input([b, c], -8.0, 8.0)
            .tensor(labels(&mut rng, b, c));
        check_op(&case);
    }
}

#[test]
fn arcface_matches_reference() {
    for (b, c) in [(1, 1), (3, 7), (5, 300)] {
        check_op(&xent_case(DELG, b, c, 1, None));
        check_op(&xent_case(DOLG, b, c, 2, None));
        check_op(&xent_case(LEARNED, b, c, 3, None).tensor(gamma(12.5)));
    }
    check_op(&xent_case(DELG, 2, 81313, 4, None));
    // θ > π − m: both fallbacks; and cosines at ±1 and just past them (rounding of a GEMM).
    let wide = ArcFaceLoss {
        margin: 0.5,
        ..DELG
    };
    for fallback in [MarginFallback::Keep, MarginFallback::Penalty] {
        check_op(&xent_case(
            ArcFaceLoss { fallback, ..wide },
            3,
            9,
            5,
            Some(-0.93),
        ));
    }
    for v in [1.0, -1.0, 1.000_001, -1.000_001] {
        check_op(&xent_case(DELG, 2, 6, 6, Some(v)));
    }
}

#[test]
fn curricular_face_matches_reference() {
    for (b, c, t) in [(1, 1, 0.3), (3, 7, 0.0), (5, 300, 0.6), (2, 81313, 0.2)] {
        check_op(&xent_case(CURRICULAR, b, c, 21, None).tensor(gamma(t)));
    }
    // With a learned scale, t comes after γ.
    let both = ArcFaceLoss {
        scale: ArcFaceScale::Input,
        ..CURRICULAR
    };
    check_op(
        &xent_case(both, 3, 9, 22, None)
            .tensor(gamma(20.0))
            .tensor(gamma(0.4)),
    );
    // Labels with a low cosine make most negatives hard: the re-weighting changes the loss.
    let (x, l) = cosines(3, 9, 23, Some(-0.2));
    let plain = DOLG.reference(&[&x.to_ref(), &l.to_ref()]).unwrap();
    let curr = CURRICULAR
        .reference(&[&x.to_ref(), &l.to_ref(), &gamma(0.5).to_ref()])
        .unwrap();
    assert!((plain[0].data[0] - curr[0].data[0]).abs() > 1e-3);
    check_op(
        &OpCase::new(CURRICULAR)
            .tensor(x)
            .tensor(l)
            .tensor(gamma(0.5)),
    );
}

#[test]
fn curricular_update_matches_reference() {
    for (b, c) in [(1, 1), (7, 13), (300, 5)] {
        let (x, l) = cosines(b, c, 24, None);
        check_op(
            &OpCase::new(CurricularUpdate { rate: 0.01 })
                .tensor(x)
                .tensor(l)
                .tensor(gamma(0.25)),
        );
    }
    // Rows over several windows.
    let (x, l) = cosines(9, 13, 25, None);
    check_op(
        &OpCase::new(CurricularUpdate { rate: 0.3 })
            .tensor(x)
            .tensor(l)
            .tensor(gamma(-0.5))
            .windows(40),
    );
}

#[test]
fn out_of_range_labels_are_clamped() {
    let (x, _) = cosines(4, 9, 7, None);
    let l = Tensor {
        shape: Shape::new(&[4]),
        data: vec![-3.0, 9.0, 1e9, 2.4],
    };
    let op = Arc::new(DELG);
    let want = op.reference(&[&x.to_ref(), &l.to_ref()]).unwrap();
    let clamped = Tensor {
        shape: Shape::new(&[4]),
        data: vec![0.0, 8.0, 8.0, 2.0],
    };
    assert_eq!(
        want,
        op.reference(&[&x.to_ref(), &clamped.to_ref()]).unwrap()
    );
    check_op(&OpCase::new(DELG).tensor(x).tensor(l));
}

#[test]
fn zero_margin_is_scaled_softmax() {
    // DELG validates without the margin: ArcFace with m = 0 is softmax
    // cross-entropy of γ·cos, with dL/dcos = γ·dL/dlogits.
    let (x, l) = cosines(3, 10, 15, None);
    let arc = ArcFaceLoss::delg(45.25, 0.0)
        .reference(&[&x.to_ref(), &l.to_ref()])
        .unwrap();
    let logits = Tensor {
        shape: x.shape.clone(),
        data: x.data.iter().map(|v| 45.25 * *v as f64).collect(),
    };
    let plain = SoftmaxCrossEntropy
        .reference(&[&logits, &l.to_ref()])
        .unwrap();
    assert!((arc[0].data[0] - plain[0].data[0]).abs() < 1e-9 * plain[0].data[0]);
    for (a, p) in arc[1].data.iter().zip(&plain[1].data) {
        assert!((a - 45.25 * p).abs() < 1e-9, "{a} vs {}", 45.25 * p);
    }
    check_op(
        &OpCase::new(ArcFaceLoss::delg(45.25, 0.0))
            .tensor(x)
            .tensor(l),
    );
}

#[test]
fn mse_and_scale_match_reference() {
    for shape in [vec![1usize], vec![3, 5, 7], vec![2, 9, 9, 33], vec![4099]] {
        check_op(&OpCase::new(MseLoss).input(shape.clone(), -2.0, 2.0).input(
            shape.clone(),
            -2.0,
            2.0,
        ));
        check_op(
            &OpCase::new(ScaleByScalar)
                .input(shape, -2.0, 2.0)
                .input([1], -3.0, 3.0),
        );
    }
}

#[test]
fn windows_split_large_tensors() {
    // 7 rows of 97 classes in windows of 150 elements: one row per window;
    // in windows of 250: two rows per window. 5001 elements in windows of
    // 700: 8 windows, none of them aligned to a workgroup's elements.
    check_op(
        &xent_case(LEARNED, 7, 97, 8, None)
            .tensor(gamma(20.0))
            .windows(150),
    );
    check_op(&xent_case(SoftmaxCrossEntropy, 7, 97, 9, None).windows(250));
    // Windows of 700 start on 16 bytes (vec4 kernels + scalar tails);
    // windows of 699 do not (scalar kernels only).
    for window in [700, 699] {
        let mse = OpCase::new(MseLoss).input([5001], -1.0, 1.0);
        check_op(&mse.input([5001], -1.0, 1.0).windows(window));
        let scale = OpCase::new(ScaleByScalar).input([5001], -1.0, 1.0);
        check_op(&scale.input([1], -1.0, 1.0).windows(window));
    }
}

#[test]
fn gradients() {
    grad_check(
        &OpCase::new(SoftmaxCrossEntropy)
            .input([3, 11], -4.0, 4.0)
            .tensor(labels(&mut Rng::new(3), 3, 11))
            .seed_outputs(&[0]),
    );
    grad_check(&xent_case(DELG, 3, 11, 10, None).seed_outputs(&[0]));
    grad_check(&xent_case(DOLG, 1, 1, 11, None).seed_outputs(&[0]));
    grad_check(
        &xent_case(CURRICULAR, 3, 8, 14, Some(0.1))
            .tensor(gamma(0.4))
            .only_grads(&[0])
            .seed_outputs(&[0]),
    );
    grad_check(
        &xent_case(LEARNED, 4, 6, 12, None)
            .tensor(gamma(7.0))
            .seed_outputs(&[0]),
    );
    // θ > π − m on every label column, both fallbacks.
    for fallback in [MarginFallback::Keep, MarginFallback::Penalty] {
        let op = ArcFaceLoss {
            scale: ArcFaceScale::Fixed(16.0),
            margin: 0.5,
            fallback,
            curricular: false,
        };
        grad_check(&xent_case(op, 3, 5, 13, Some(-0.93)).seed_outputs(&[0]));
    }
    grad_check(
        &OpCase::new(MseLoss)
            .input([2, 3, 5, 7], -2.0, 2.0)
            .input([2, 3, 5, 7], -2.0, 2.0)
            .seed_outputs(&[0]),
    );
}

#[test]
fn bad_shapes_and_parameters_are_typed_errors() {
    let s = |d: &[usize]| Shape::new(d);
    let err = DELG.infer(&[&s(&[4, 10]), &s(&[5])]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = LEARNED.infer(&[&s(&[4, 10]), &s(&[4])]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = LEARNED
        .infer(&[&s(&[4, 10]), &s(&[4]), &s(&[2])])
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = SoftmaxCrossEntropy
        .infer(&[&s(&[2, 3, 4]), &s(&[2])])
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = MseLoss.infer(&[&s(&[2, 3]), &s(&[3, 2])]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = ScaleByScalar.infer(&[&s(&[2, 3]), &s(&[2])]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = ArcFaceLoss {
        margin: 4.0,
        ..DELG
    }
    .infer(&[&s(&[4, 10]), &s(&[4])])
    .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let err = ArcFaceLoss::delg(-1.0, 0.1)
        .infer(&[&s(&[4, 10]), &s(&[4])])
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    // A row of classes wider than one storage binding.
    if let Some(gpu) = crate::testing::windowed_gpus(50).first() {
        let (x, l) = cosines(2, 97, 14, None);
        let err = run_op(gpu, Arc::new(SoftmaxCrossEntropy), &[&x, &l]).unwrap_err();
        assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");
    }
}

#[test]
fn saved_gradients_are_not_differentiable() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3]);
    let l = g.input("l", [2]);
    let outs = g.apply(SoftmaxCrossEntropy, &[x, l]).unwrap();
    let seed = g.input("seed", [2, 3]);
    let err = g.backward(&[(outs[1], seed)], &[x]).unwrap_err();
    assert!(err.to_string().contains("by-products"), "{err}");
}

/// Times the family's ops at training sizes on the first test device:
/// `cargo test --lib ops::loss::tests::throughput -- --ignored --nocapture` (the
/// kernels run in the driver, so a debug build of the crate times the same).
#[test]
#[ignore]
fn throughput() {
    use crate::ops::optim::{GlobalNormClip, SgdStep};
    let Some(gpu) = test_gpu() else { return };
    let (b, c, n) = (32, 81313, 8 << 20);
    let sgd = SgdStep {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-4,
    };
    /// A labelled op and the shapes of its inputs.
    type Case = (&'static str, Box<dyn Op>, Vec<Vec<usize>>);
    let cases: [Case; 4] = [
        (
            "arcface 32x81313",
            Box::new(DELG),
            vec![vec![b, c], vec![b]],
        ),
        (
            "mse 32x20x20x1024",
            Box::new(MseLoss),
            vec![vec![32, 20, 20, 1024]; 2],
        ),
        (
            "sgd 8M",
            Box::new(sgd),
            vec![vec![n], vec![n], vec![n], vec![1], vec![1]],
        ),
        (
            "global norm 8M",
            Box::new(GlobalNormClip { max_norm: 10.0 }),
            vec![vec![n]],
        ),
    ];
    let mut rng = Rng::new(1);
    for (name, op, shapes) in cases {
        let ins: Vec<DeviceTensor> = shapes
            .iter()
            .map(|s| DeviceTensor::upload(&gpu, &rng.tensor(s.clone(), -0.9, 0.9)).unwrap())
            .collect();
        let in_shapes: Vec<&Shape> = ins.iter().map(|t| &t.shape).collect();
        let outs: Vec<DeviceTensor> = op
            .infer(&in_shapes)
            .unwrap()
            .into_iter()
            .map(|s| DeviceTensor::zeros(&gpu, s).unwrap())
            .collect();
        gpu.reserve_scratch(&op.scratch(&gpu, &in_shapes).unwrap())
            .unwrap();
        let mut rec = Recorder::new(&gpu);
        let (ins, outs): (Vec<_>, Vec<_>) = (ins.iter().collect(), outs.iter().collect());
        op.record(&mut rec, &ins, &outs).unwrap();
        let recording = rec.finish().unwrap();
        let mut ms: Vec<f64> = (0..6)
            .map(|_| {
                let t = std::time::Instant::now();
                recording.submit(&gpu).unwrap();
                gpu.wait().unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        // The first run compiles the kernels.
        ms.remove(0);
        ms.sort_by(f64::total_cmp);
        eprintln!(
            "{name}: median {:.1} ms [{:.1}..{:.1}]",
            ms[2], ms[0], ms[4]
        );
    }
}
