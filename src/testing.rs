//! The proof harness every kernel family uses in its tests: GPU against the
//! f64 reference on random inputs, for every kernel variant the tuning table
//! can choose on this adapter, and finite-difference gradient checks.
//!
//! A missing adapter fails every GPU test, so a suite can never pass while
//! checking nothing; `DELG_ALLOW_NO_GPU=1` is the explicit opt-out, which
//! skips the GPU half with a message instead.
//!
//! Not part of the library's API: compiled for the crate's own tests and,
//! through the `test-harness` feature, for its integration tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::gpu::{DeviceTensor, Gpu, GpuOptions, MatmulVariant, Recorder, Tuning, TILED_CONFIGS};
use crate::graph::exec::{run_op_stored, Executable, ParamStore};
use crate::graph::reference::eval_reference;
use crate::graph::{Graph, Op, TensorId};
use crate::tensor::{HostTensor, Precision, RefTensor, Rng, Shape};

fn no_gpu_allowed() -> bool {
    std::env::var_os("DELG_ALLOW_NO_GPU").is_some_and(|v| v != "0" && v != "false")
}

/// Set (to a lane count) in the child process that reruns the variant tests
/// with llvmpipe at 512 bits: every test then fails unless the tuning table
/// chose the broadcast kernels of that width, so the child cannot pass by
/// silently testing another variant.
pub const EXPECT_LANES_VAR: &str = "DELG_TEST_EXPECT_LANES";

/// One device per tuning variant the adapter supports (every variant is tested).
pub fn test_gpus() -> &'static [Arc<Gpu>] {
    static GPUS: OnceLock<Vec<Arc<Gpu>>> = OnceLock::new();
    GPUS.get_or_init(|| {
        let gpus = Gpu::every_variant(&GpuOptions::default()).unwrap_or_else(|e| {
            if !no_gpu_allowed() {
                panic!(
                    "no GPU adapter: {e}\n(set DELG_ALLOW_NO_GPU=1 to skip the GPU checks instead)"
                );
            }
            eprintln!("skipping GPU checks (DELG_ALLOW_NO_GPU is set): {e}");
            Vec::new()
        });
        if let Some(lanes) = std::env::var_os(EXPECT_LANES_VAR) {
            let chosen = gpus
                .first()
                .map(|g| (g.tuning.matmul, g.facts.name.clone()));
            let lanes: u32 = lanes.to_string_lossy().parse().unwrap_or(0);
            assert!(
                matches!(chosen, Some((v, _)) if v.broadcast_lanes() == Some(lanes)),
                "{EXPECT_LANES_VAR}={lanes}, but the tuning table chose {chosen:?}"
            );
        }
        gpus
    })
}

pub fn test_gpu() -> Option<Arc<Gpu>> {
    test_gpus().first().cloned()
}

/// Devices opened once per key (a window size) and kept for the whole test run.
type DeviceCache<K> = Mutex<Vec<(K, Vec<Arc<Gpu>>)>>;

/// The devices of `test_gpus`, opened again so that ops split their operands
/// into windows of at most `elems` f32 elements: every windowed path runs on
/// tiny tensors. Cached per size.
pub fn windowed_gpus(elems: u64) -> Vec<Arc<Gpu>> {
    static CACHE: DeviceCache<u64> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, gpus)) = cache.iter().find(|(e, _)| *e == elems) {
        return gpus.clone();
    }
    let Some(first) = test_gpus().first() else {
        return Vec::new();
    };
    let opts = GpuOptions {
        max_binding_override: Some(elems * 4 + first.binding_alignment()),
        ..Default::default()
    };
    let gpus = Gpu::every_variant(&opts).expect("the test adapter opened again");
    for gpu in &gpus {
        assert_eq!(gpu.max_window_elems(), elems, "window override");
    }
    cache.push((elems, gpus.clone()));
    gpus
}

/// A device per tiled config that `test_gpus` (or `windowed_gpus(elems)`)
/// does not already run, each forced to that config. Cached per window.
pub fn tiled_config_gpus(window: Option<u64>) -> Vec<Arc<Gpu>> {
    static CACHE: DeviceCache<Option<u64>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, gpus)) = cache.iter().find(|(w, _)| *w == window) {
        return gpus.clone();
    }
    let base = match window {
        Some(elems) => windowed_gpus(elems),
        None => test_gpus().to_vec(),
    };
    let Some(first) = base.first() else {
        return Vec::new();
    };
    let opts = GpuOptions {
        max_binding_override: window.map(|elems| elems * 4 + first.binding_alignment()),
        ..Default::default()
    };
    let gpus: Vec<Arc<Gpu>> = TILED_CONFIGS
        .into_iter()
        .map(MatmulVariant::Tiled)
        .filter(|v| base.iter().all(|g| g.tuning.matmul != *v))
        .filter(|v| v.supported(first.features, &first.facts, &first.limits))
        .map(|matmul| {
            let tuning = Tuning {
                matmul,
                ..first.tuning
            };
            Gpu::new_with_tuning(&opts, tuning).expect("the test adapter opened again")
        })
        .collect();
    cache.push((window, gpus.clone()));
    gpus
}

/// An op and its inputs for a check.
pub struct OpCase {
    pub op: Arc<dyn Op>,
    pub inputs: Vec<HostTensor>,
    /// How each input is stored on the device (f32 unless `stored` says).
    pub precisions: Vec<Precision>,
    /// Inputs whose gradients are checked (default: all for which backward gives one).
    pub differentiable: Option<Vec<usize>>,
    /// Outputs `grad_check` seeds (default: all). Fused losses also output the
    /// gradient they saved for their backward; that by-product is not differentiated.
    pub seeded_outputs: Option<Vec<usize>>,
    pub forward_tol: f64,
    pub grad_tol: f64,
    /// Run on devices whose windows hold at most this many elements.
    pub window: Option<u64>,
    /// Run on a device per tiled config too (`every_tiled_config`).
    pub tiled_configs: bool,
    rng: Rng,
}

impl OpCase {
    pub fn new(op: impl Op + 'static) -> Self {
        OpCase {
            op: Arc::new(op),
            inputs: Vec::new(),
            precisions: Vec::new(),
            differentiable: None,
            seeded_outputs: None,
            forward_tol: 1e-4,
            grad_tol: 1e-3,
            window: None,
            tiled_configs: false,
            rng: Rng::new(0x5eed),
        }
    }
    /// Adds a uniform random input in [lo, hi).
    pub fn input(mut self, shape: impl Into<Shape>, lo: f64, hi: f64) -> Self {
        let t = self.rng.tensor(shape, lo, hi);
        self.tensor(t)
    }
    pub fn tensor(mut self, t: HostTensor) -> Self {
        self.inputs.push(t);
        self.precisions.push(Precision::F32);
        self
    }
    /// Stores input `i` at `precision` on the device; the reference then
    /// sees it rounded the same way.
    pub fn stored(mut self, i: usize, precision: Precision) -> Self {
        self.precisions[i] = precision;
        self
    }
    pub fn only_grads(mut self, which: &[usize]) -> Self {
        self.differentiable = Some(which.to_vec());
        self
    }
    pub fn seed_outputs(mut self, which: &[usize]) -> Self {
        self.seeded_outputs = Some(which.to_vec());
        self
    }
    /// Checks on devices whose windows hold at most `elems` elements.
    pub fn windows(mut self, elems: u64) -> Self {
        self.window = Some(elems);
        self
    }
    /// Checks on a device per tiled config as well (the matmul family's
    /// tests: the configs only differ in their kernels).
    pub fn every_tiled_config(mut self) -> Self {
        self.tiled_configs = true;
        self
    }
    fn gpus(&self) -> Vec<Arc<Gpu>> {
        let mut gpus = match self.window {
            Some(elems) => windowed_gpus(elems),
            None => test_gpus().to_vec(),
        };
        if self.tiled_configs {
            gpus.extend(tiled_config_gpus(self.window));
        }
        gpus
    }
    pub fn tol(mut self, forward: f64, grad: f64) -> Self {
        self.forward_tol = forward;
        self.grad_tol = grad;
        self
    }
}

/// Largest |got − want|, infinite when either side holds a NaN or an
/// infinity: `f64::max` skips NaN, so a plain fold would pass a NaN output.
pub fn max_abs_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    if got.iter().any(|v| !v.is_finite()) || want.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max)
}

/// Largest |a−b| over the largest |b| (at least `floor`): a scale-free error
/// that treats a tensor as one object, as ggml's test-backend-ops does with
/// its NMSE. Infinite on any NaN or infinity.
pub fn scaled_max_error(got: &[f32], want: &[f64], floor: f64) -> f64 {
    let scale = want.iter().fold(floor, |m, v| m.max(v.abs()));
    max_abs_error(got, want) / scale
}

/// [`scaled_max_error`] with a floor that only avoids dividing by zero.
pub fn normalized_max_error(got: &[f32], want: &[f64]) -> f64 {
    scaled_max_error(got, want, 1e-12)
}

pub fn assert_close(what: &str, got: &HostTensor, want: &RefTensor, tol: f64) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    if let Some(i) = got.data.iter().position(|v| !v.is_finite()) {
        panic!("{what}: non-finite value {} at {i}", got.data[i]);
    }
    let err = normalized_max_error(&got.data, &want.data);
    if err > tol {
        let worst = (0..got.data.len())
            .max_by(|&a, &b| {
                (got.data[a] as f64 - want.data[a])
                    .abs()
                    .total_cmp(&(got.data[b] as f64 - want.data[b]).abs())
            })
            .unwrap_or(0);
        panic!(
            "{what}: normalized max error {err:.3e} > {tol:.0e}; worst at {worst} of {:?}: got {} want {}",
            got.shape, got.data[worst], want.data[worst]
        );
    }
}

/// The shader labels of the dispatches `op` records for zero inputs of
/// `shapes`: which kernel variant it chose.
pub fn dispatch_labels(gpu: &Gpu, op: &dyn Op, shapes: &[&[usize]]) -> Vec<String> {
    dispatch_labels_as(gpu, op, shapes, &vec![Precision::F32; shapes.len()])
}

/// `dispatch_labels` with the inputs stored at `precisions` (the output as
/// the op stores it).
pub fn dispatch_labels_as(
    gpu: &Gpu,
    op: &dyn Op,
    shapes: &[&[usize]],
    precisions: &[Precision],
) -> Vec<String> {
    let ins: Vec<DeviceTensor> = shapes
        .iter()
        .zip(precisions)
        .map(|(s, p)| DeviceTensor::zeros_as(gpu, Shape::new(s), *p).unwrap())
        .collect();
    let refs: Vec<&DeviceTensor> = ins.iter().collect();
    let shape_refs: Vec<&Shape> = ins.iter().map(|t| &t.shape).collect();
    let out_precision = op.output_precision(precisions).unwrap();
    let out_shape = op.infer(&shape_refs).unwrap().remove(0);
    let out = DeviceTensor::zeros_as(gpu, out_shape, out_precision).unwrap();
    gpu.reserve_scratch(&op.scratch(gpu, &shape_refs).unwrap())
        .unwrap();
    let mut rec = Recorder::new(gpu);
    op.record(&mut rec, &refs, &[&out]).unwrap();
    rec.finish().unwrap().labels
}

/// Runs the op on every test device and compares every output with the reference.
pub fn check_op(case: &OpCase) {
    let refs: Vec<RefTensor> = case
        .inputs
        .iter()
        .zip(&case.precisions)
        .map(|(t, p)| {
            let mut r = t.to_ref();
            r.data.iter_mut().for_each(|v| *v = p.round(*v));
            r
        })
        .collect();
    let want = case
        .op
        .reference(&refs.iter().collect::<Vec<_>>())
        .expect("reference");
    for gpu in &case.gpus() {
        let got = run_op_stored(
            gpu,
            case.op.clone(),
            &case.inputs.iter().collect::<Vec<_>>(),
            &case.precisions,
        )
        .unwrap_or_else(|e| panic!("{} on {}: {e}", case.op.name(), gpu.tuning.describe()));
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close(
                &format!("{} output {i} ({})", case.op.name(), gpu.tuning.describe()),
                g,
                w,
                case.forward_tol,
            );
        }
    }
}

/// Σ⟨seed, output⟩ over the seeded outputs by the reference forward pass, for finite differences.
fn objective(op: &Arc<dyn Op>, inputs: &[RefTensor], seeded: &[usize], seeds: &[RefTensor]) -> f64 {
    let outs = op
        .reference(&inputs.iter().collect::<Vec<_>>())
        .expect("reference");
    seeded
        .iter()
        .zip(seeds)
        .map(|(&o, s)| {
            outs[o]
                .data
                .iter()
                .zip(&s.data)
                .map(|(a, b)| a * b)
                .sum::<f64>()
        })
        .sum()
}

/// Gradient check: builds forward + autodiff backward as a graph, runs it on
/// the reference and on every test device, and compares both with central
/// finite differences of the f64 reference (relative error ≤ `grad_tol`,
/// measured against the largest gradient magnitude of that input).
pub fn grad_check(case: &OpCase) {
    let name = case.op.name();
    let mut g = Graph::new();
    let ins: Vec<TensorId> = case
        .inputs
        .iter()
        .enumerate()
        .map(|(i, t)| g.input(&format!("x{i}"), t.shape.clone()))
        .collect();
    let all_outs = g.apply_arc(case.op.clone(), &ins).expect("apply");
    let seeded: Vec<usize> = case
        .seeded_outputs
        .clone()
        .unwrap_or_else(|| (0..all_outs.len()).collect());
    let outs: Vec<TensorId> = seeded.iter().map(|&o| all_outs[o]).collect();
    let mut rng = Rng::new(99);
    let seed_vals: Vec<HostTensor> = outs
        .iter()
        .map(|o| rng.tensor(g.shape(*o).clone(), -1.0, 1.0))
        .collect();
    let seeds: Vec<TensorId> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| g.input(&format!("seed{i}"), g.shape(*o).clone()))
        .collect();
    let pairs: Vec<(TensorId, TensorId)> =
        outs.iter().copied().zip(seeds.iter().copied()).collect();
    let grads = g.backward(&pairs, &ins).expect("backward");
    let checked: Vec<usize> = match &case.differentiable {
        Some(w) => w.clone(),
        None => (0..ins.len()).filter(|&i| grads[i].is_some()).collect(),
    };
    assert!(!checked.is_empty(), "{name}: no input has a gradient");
    let targets: Vec<TensorId> = checked
        .iter()
        .map(|&i| grads[i].unwrap_or_else(|| panic!("{name}: input {i} has no gradient")))
        .collect();

    // Reference backward.
    let mut values: HashMap<TensorId, RefTensor> = HashMap::new();
    for (t, v) in ins.iter().zip(&case.inputs) {
        values.insert(*t, v.to_ref());
    }
    for (t, v) in seeds.iter().zip(&seed_vals) {
        values.insert(*t, v.to_ref());
    }
    eval_reference(&g, &targets, &mut values).expect("reference backward");

    // Finite differences on a sample of elements of each checked input.
    let in_refs: Vec<RefTensor> = case.inputs.iter().map(|t| t.to_ref()).collect();
    let seed_refs: Vec<RefTensor> = seed_vals.iter().map(|t| t.to_ref()).collect();
    for (&i, t) in checked.iter().zip(&targets) {
        let analytic = &values[t];
        let scale = analytic
            .data
            .iter()
            .fold(0f64, |m, v| m.max(v.abs()))
            .max(1e-6);
        let n = in_refs[i].data.len();
        let picks: Vec<usize> = if n <= 24 {
            (0..n).collect()
        } else {
            (0..24).map(|_| rng.below(n)).collect()
        };
        for k in picks {
            let h = 1e-6 * in_refs[i].data[k].abs().max(1.0);
            let mut plus = in_refs.clone();
            plus[i].data[k] += h;
            let mut minus = in_refs.clone();
            minus[i].data[k] -= h;
            let fd = (objective(&case.op, &plus, &seeded, &seed_refs)
                - objective(&case.op, &minus, &seeded, &seed_refs))
                / (2.0 * h);
            let err = (fd - analytic.data[k]).abs() / scale;
            assert!(err <= 1e-5, "{name}: reference gradient of input {i}[{k}] = {} but finite difference {fd} (rel {err:.2e})", analytic.data[k]);
        }
    }

    // GPU backward against the (now proven) reference gradients.
    for gpu in &case.gpus() {
        let exe = Executable::new(gpu, &g, &targets, &ParamStore::default())
            .unwrap_or_else(|e| panic!("{name} backward on {}: {e}", gpu.tuning.describe()));
        for (t, v) in ins
            .iter()
            .zip(&case.inputs)
            .chain(seeds.iter().zip(&seed_vals))
        {
            exe.set_input(*t, v).expect("input");
        }
        exe.run().expect("run");
        for (&i, t) in checked.iter().zip(&targets) {
            let got = exe.read(*t).expect("read");
            assert_close(
                &format!("{name} gradient of input {i} ({})", gpu.tuning.describe()),
                &got,
                &values[t],
                case.grad_tol,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // `!(e <= limit)` is the point: a NaN error must fail the check.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    fn one_nan_or_infinity_fails_every_comparison() {
        let want = [1.0, 2.0, 3.0];
        assert_eq!(normalized_max_error(&[1.0, 2.0, 3.0], &want), 0.0);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let got = [1.0, bad, 3.0];
            assert_eq!(max_abs_error(&got, &want), f64::INFINITY, "{bad}");
            assert!(!(normalized_max_error(&got, &want) <= 1e-3), "{bad}");
        }
        assert_eq!(
            normalized_max_error(&[1.0, 2.0, 3.0], &[1.0, f64::NAN, 3.0]),
            f64::INFINITY
        );
        let got = HostTensor::new([3], vec![1.0, f32::NAN, 3.0]).unwrap();
        let want = HostTensor::new([3], vec![1.0, 2.0, 3.0]).unwrap().to_ref();
        let caught = std::panic::catch_unwind(|| assert_close("nan", &got, &want, 1.0));
        assert!(caught.is_err(), "assert_close accepted a NaN");
    }
}
