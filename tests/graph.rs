//! The scheduler end to end: autodiff through shared tensors and views,
//! stop-gradient, memory reuse in a planned executable, and reference vs GPU
//! agreement for a whole graph.

use std::collections::HashMap;

use delg_gpu::graph::exec::{Executable, ParamStore};
use delg_gpu::graph::reference::eval_reference;
use delg_gpu::graph::{Graph, TensorId};
use delg_gpu::ops::elementwise::{Binary, BinaryKind, Reshape, StopGradient, Unary, UnaryKind};
use delg_gpu::ops::gemm::Matmul;
use delg_gpu::tensor::{RefTensor, Rng, Shape};
use delg_gpu::testing::{assert_close, test_gpus};

fn mul(g: &mut Graph, a: TensorId, b: TensorId) -> TensorId {
    g.apply1(Binary::new(BinaryKind::Mul), &[a, b]).unwrap()
}

#[test]
fn gradients_accumulate_where_a_tensor_is_used_twice() {
    // y = x·x + relu(x), viewed through a reshape; dy/dx = 2x + [x > 0].
    let mut g = Graph::new();
    let x = g.input("x", [3, 5]);
    let sq = mul(&mut g, x, x);
    let r = g.apply1(Unary(UnaryKind::Relu), &[x]).unwrap();
    let y = g.apply1(Binary::new(BinaryKind::Add), &[sq, r]).unwrap();
    let y = g
        .apply1(
            Reshape {
                shape: Shape::new(&[15]),
            },
            &[y],
        )
        .unwrap();
    let seed = g.input("seed", [15]);
    let dx = g.backward(&[(y, seed)], &[x]).unwrap()[0].expect("x has a gradient");

    let mut rng = Rng::new(3);
    let xv = rng.tensor([3, 5], -2.0, 2.0);
    let sv = rng.tensor([15], -1.0, 1.0);
    let want: Vec<f64> = xv
        .data
        .iter()
        .zip(&sv.data)
        .map(|(&a, &s)| s as f64 * (2.0 * a as f64 + if a > 0.0 { 1.0 } else { 0.0 }))
        .collect();
    let want = RefTensor::new([3, 5], want).unwrap();

    let mut values = HashMap::from([(x, xv.to_ref()), (seed, sv.to_ref())]);
    eval_reference(&g, &[dx], &mut values).unwrap();
    assert_close("reference dx", &values[&dx].to_host(), &want, 1e-7);

    for gpu in test_gpus() {
        let exe = Executable::new(gpu, &g, &[dx], &ParamStore::default()).unwrap();
        exe.set_input(x, &xv).unwrap();
        exe.set_input(seed, &sv).unwrap();
        exe.run().unwrap();
        assert_close("gpu dx", &exe.read(dx).unwrap(), &want, 1e-6);
        assert_eq!(
            exe.stats().passes,
            1,
            "the whole backward is one compute pass"
        );
    }
}

#[test]
fn stop_gradient_blocks_the_backward_pass() {
    let mut g = Graph::new();
    let x = g.input("x", [4]);
    let w = g.param("w", [4]);
    let s = g.apply1(StopGradient, &[x]).unwrap();
    let y = mul(&mut g, s, w);
    let seed = g.input("seed", [4]);
    let grads = g.backward(&[(y, seed)], &[x, w]).unwrap();
    assert!(grads[0].is_none(), "no gradient may cross a stop-gradient");
    assert!(grads[1].is_some());
}

#[test]
fn planned_memory_reuses_buffers_along_a_chain() {
    let mut g = Graph::new();
    let x = g.input("x", [1, 9, 7, 5]);
    let mut t = x;
    for i in 0..10 {
        let kind = if i % 2 == 0 {
            UnaryKind::Relu
        } else {
            UnaryKind::Scale(1.5)
        };
        t = g.apply1(Unary(kind), &[t]).unwrap();
    }
    let Some(gpu) = test_gpus().first() else {
        return;
    };
    let exe = Executable::new(gpu, &g, &[t], &ParamStore::default()).unwrap();
    assert_eq!(
        exe.memory.slot_bytes.len(),
        2,
        "a chain needs two buffers, ping-ponged"
    );
    assert!(exe.memory.total_bytes() * 5 == exe.unplanned_bytes);
    let xv = Rng::new(5).tensor([1, 9, 7, 5], -1.0, 1.0);
    exe.set_input(x, &xv).unwrap();
    exe.run().unwrap();
    let mut values = HashMap::from([(x, xv.to_ref())]);
    eval_reference(&g, &[t], &mut values).unwrap();
    assert_close("chain", &exe.read(t).unwrap(), &values[&t], 1e-6);
}

#[test]
fn missing_parameters_and_bad_inputs_are_typed_errors() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 2]);
    let w = g.param("weight", [2, 2]);
    let y = mul(&mut g, x, w);
    let Some(gpu) = test_gpus().first() else {
        return;
    };
    let err = Executable::new(gpu, &g, &[y], &ParamStore::default())
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("'weight' was not loaded"), "{err}");
    let mut params = ParamStore::default();
    params
        .insert(gpu, "weight", &Rng::new(1).tensor([2, 2], 0.0, 1.0))
        .unwrap();
    let exe = Executable::new(gpu, &g, &[y], &params).unwrap();
    let err = exe
        .set_input(x, &Rng::new(1).tensor([4], 0.0, 1.0))
        .unwrap_err();
    assert!(err.to_string().contains("expected"), "{err}");
}

#[test]
fn stages_survive_import_and_run_one_submission_each() {
    let mut inner = Graph::new();
    let a = inner.input("a", [3, 5]);
    inner.begin_stage("first");
    let r = inner.apply1(Unary(UnaryKind::Relu), &[a]).unwrap();
    inner.begin_stage("second");
    let s = inner.apply1(Unary(UnaryKind::Scale(2.0)), &[r]).unwrap();
    let y = inner.apply1(Unary(UnaryKind::Scale(-0.5)), &[s]).unwrap();

    let mut g = Graph::new();
    let x = g.input("x", [3, 5]);
    g.begin_stage("outer");
    let pre = g.apply1(Unary(UnaryKind::Scale(3.0)), &[x]).unwrap();
    let map = g.import(&inner, &[(a, pre)]).unwrap();
    let out = map[&y];
    let names: Vec<&str> = (0..g.nodes.len()).map(|n| g.stage_of(n)).collect();
    assert_eq!(names, ["outer", "first", "second", "second"]);

    let Some(gpu) = test_gpus().first() else {
        return;
    };
    let exe = Executable::new(gpu, &g, &[out], &ParamStore::default()).unwrap();
    let xv = Rng::new(3).tensor([3, 5], -1.0, 1.0);
    exe.set_input(x, &xv).unwrap();
    let stages = exe.run_stages().unwrap();
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["outer", "first", "second"]);
    let mut values = HashMap::from([(x, xv.to_ref())]);
    eval_reference(&g, &[out], &mut values).unwrap();
    assert_close("staged run", &exe.read(out).unwrap(), &values[&out], 1e-6);
}

#[test]
fn profile_times_every_node_and_gives_the_results_of_run() {
    // Three elementwise nodes and a product: every scheduled node gets one
    // finite, non-negative time (device timestamps where the adapter has
    // them), and the profiled run leaves the same output as the reference.
    let mut g = Graph::new();
    let x = g.input("x", [64, 48]);
    let w = g.input("w", [48, 40]);
    let r = g.apply1(Unary(UnaryKind::Relu), &[x]).unwrap();
    let p = g.apply1(Matmul::new(false, false), &[r, w]).unwrap();
    let y = g.apply1(Unary(UnaryKind::Scale(0.5)), &[p]).unwrap();
    for gpu in test_gpus() {
        let exe = Executable::new(gpu, &g, &[y], &ParamStore::default()).unwrap();
        let (xv, wv) = (
            Rng::new(5).tensor([64, 48], -1.0, 1.0),
            Rng::new(6).tensor([48, 40], -1.0, 1.0),
        );
        exe.set_input(x, &xv).unwrap();
        exe.set_input(w, &wv).unwrap();
        let rows = exe.profile().unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            names,
            ["relu", "matmul", "scale"],
            "{}",
            exe.timing_source()
        );
        assert!(
            rows.iter().all(|r| r.3.is_finite() && r.3 >= 0.0),
            "{rows:?}"
        );
        assert!(rows[1].3 > 0.0, "the product took no time: {rows:?}");
        assert_eq!(rows[1].2, 2 * 64 * 48 * 40);
        let mut values = HashMap::from([(x, xv.to_ref()), (w, wv.to_ref())]);
        eval_reference(&g, &[y], &mut values).unwrap();
        assert_close("profiled run", &exe.read(y).unwrap(), &values[&y], 1e-5);
    }
}
