//! The graph scheduler: ops as nodes (this file), memory planning by liveness
//! (`plan`), execution on the GPU (`exec`) and on the f64 references
//! (`reference`). Building, planning and running are separate stages; all
//! but the GPU run work without a device, so they are unit-tested anywhere.
//! Reverse-mode differentiation adds ordinary nodes (`ops::autodiff`).

pub mod exec;
pub mod plan;
pub mod reference;

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{DeviceTensor, Gpu, Recorder, ScratchNeed};
use crate::tensor::{Precision, RefTensor, Shape};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// Fed by the caller before each run.
    Input,
    /// Persistent across runs (weights, optimiser state, running statistics).
    Param,
    /// Produced by a node; its memory is planned.
    Computed,
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub shape: Shape,
    pub kind: TensorKind,
    pub name: String,
    /// Node that produces it (None for inputs and params).
    pub producer: Option<usize>,
    /// The tensor whose memory this one shares (itself unless it is a view).
    pub storage: TensorId,
    /// How its elements are stored on the device.
    pub precision: Precision,
}

/// The default of `Op::output_precision`: f32 in, f32 out.
pub fn f32_only(op: &str, inputs: &[Precision]) -> Result<Precision> {
    match inputs.iter().position(|p| *p != Precision::F32) {
        None => Ok(Precision::F32),
        Some(i) => Err(Error::Internal(format!(
            "{op} reads f32 only, but its input {i} is stored in {}: cast it first",
            inputs[i].name()
        ))),
    }
}

/// One kernel family's operation. Every op has a plain-Rust reference in f64
/// and a GPU recording; ops used in training also have a backward rule that
/// adds gradient nodes to the graph.
pub trait Op: Debug + Send + Sync {
    fn name(&self) -> &'static str;

    /// Output shapes for these input shapes, or a shape error.
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>>;

    /// The storage precision of every output for inputs stored at `inputs`;
    /// an op whose kernels read only f32 refuses others here, where the
    /// graph is built.
    fn output_precision(&self, inputs: &[Precision]) -> Result<Precision> {
        f32_only(self.name(), inputs)
    }

    /// The reference computation.
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>>;

    /// Records the kernels that compute `outputs` from `inputs`.
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()>;

    /// Scratch memory the op's dispatches need for inputs of these shapes on
    /// `gpu` (staging textures, reduction partials): reserved by the planner
    /// before recording, looked up (never allocated) by `record`.
    fn scratch(&self, _gpu: &Gpu, _inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        Ok(Vec::new())
    }

    /// Adds nodes computing the gradient of each input from the gradients of
    /// the outputs (None where an output has no gradient).
    fn backward(
        &self,
        _g: &mut Graph,
        _inputs: &[TensorId],
        _outputs: &[TensorId],
        _grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        Err(Error::Internal(format!(
            "{} has no backward pass",
            self.name()
        )))
    }

    /// Floating-point operations for these input shapes (for GFLOP/s reports).
    fn flops(&self, _inputs: &[&Shape]) -> u64 {
        0
    }

    /// The op's name in per-node profiles, with whatever tells its instances
    /// apart in time (a convolution's kernel, stride and channels).
    fn profile_label(&self, _inputs: &[&Shape]) -> String {
        self.name().to_string()
    }

    /// Inputs this op overwrites in place (optimiser state, running statistics).
    fn mutates(&self) -> &'static [usize] {
        &[]
    }

    /// If the single output is a view of input `i` (same memory, new shape).
    fn view_of(&self) -> Option<usize> {
        None
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Arc<dyn Op>,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub tensors: Vec<TensorInfo>,
    pub nodes: Vec<Node>,
    /// Named stages (the pyramid, the backbone, the heads) and the index of
    /// the first node added in each: a node belongs to the last stage begun
    /// before it. Only for reporting time by stage.
    pub stages: Vec<(String, usize)>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts stage `name`: the nodes added from now on belong to it.
    pub fn begin_stage(&mut self, name: &str) {
        self.stages.push((name.to_string(), self.nodes.len()));
    }

    /// Name of the stage node `n` belongs to ("" before the first stage).
    pub fn stage_of(&self, n: usize) -> &str {
        self.stages
            .iter()
            .rev()
            .find(|(_, first)| *first <= n)
            .map_or("", |(name, _)| name.as_str())
    }

    fn add_tensor(
        &mut self,
        name: String,
        shape: Shape,
        kind: TensorKind,
        producer: Option<usize>,
        precision: Precision,
    ) -> TensorId {
        let id = TensorId(self.tensors.len());
        self.tensors.push(TensorInfo {
            shape,
            kind,
            name,
            producer,
            storage: id,
            precision,
        });
        id
    }

    pub fn input(&mut self, name: &str, shape: impl Into<Shape>) -> TensorId {
        self.add_tensor(
            name.into(),
            shape.into(),
            TensorKind::Input,
            None,
            Precision::F32,
        )
    }

    pub fn param(&mut self, name: &str, shape: impl Into<Shape>) -> TensorId {
        self.param_as(name, shape, Precision::F32)
    }

    /// A parameter stored at `precision` (f16 convolution weights).
    pub fn param_as(
        &mut self,
        name: &str,
        shape: impl Into<Shape>,
        precision: Precision,
    ) -> TensorId {
        self.add_tensor(
            name.into(),
            shape.into(),
            TensorKind::Param,
            None,
            precision,
        )
    }

    pub fn precision(&self, t: TensorId) -> Precision {
        self.tensors[t.0].precision
    }

    pub fn info(&self, t: TensorId) -> &TensorInfo {
        &self.tensors[t.0]
    }

    pub fn shape(&self, t: TensorId) -> &Shape {
        &self.tensors[t.0].shape
    }

    /// Adds a node; checks shapes now so errors surface where the graph is built.
    pub fn apply(&mut self, op: impl Op + 'static, inputs: &[TensorId]) -> Result<Vec<TensorId>> {
        self.apply_arc(Arc::new(op), inputs)
    }

    pub fn apply_arc(&mut self, op: Arc<dyn Op>, inputs: &[TensorId]) -> Result<Vec<TensorId>> {
        if let Some(bad) = inputs.iter().find(|t| t.0 >= self.tensors.len()) {
            return Err(Error::Internal(format!(
                "{}: unknown tensor {bad:?}",
                op.name()
            )));
        }
        let shapes: Vec<&Shape> = inputs.iter().map(|t| self.shape(*t)).collect();
        let out_shapes = op.infer(&shapes)?;
        let in_precisions: Vec<Precision> = inputs.iter().map(|t| self.precision(*t)).collect();
        let precision = match op.view_of() {
            Some(v) => in_precisions[v],
            None => op.output_precision(&in_precisions)?,
        };
        let node = self.nodes.len();
        let outputs: Vec<TensorId> = out_shapes
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                self.add_tensor(
                    format!("{}#{node}.{i}", op.name()),
                    s,
                    TensorKind::Computed,
                    Some(node),
                    precision,
                )
            })
            .collect();
        if let Some(v) = op.view_of() {
            let storage = self.tensors[inputs[v].0].storage;
            self.tensors[outputs[0].0].storage = storage;
        }
        self.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            outputs: outputs.clone(),
        });
        Ok(outputs)
    }

    /// `apply` for single-output ops.
    pub fn apply1(&mut self, op: impl Op + 'static, inputs: &[TensorId]) -> Result<TensorId> {
        let name = op.name();
        let out = self.apply(op, inputs)?;
        match out.as_slice() {
            [one] => Ok(*one),
            _ => Err(Error::Internal(format!(
                "{name} has {} outputs, expected one",
                out.len()
            ))),
        }
    }

    /// Copies `other` into this graph, feeding its inputs from `bind` (its
    /// input → our tensor) and sharing parameters by name. Returns where each
    /// of its tensors landed.
    pub fn import(
        &mut self,
        other: &Graph,
        bind: &[(TensorId, TensorId)],
    ) -> Result<std::collections::HashMap<TensorId, TensorId>> {
        let mut map: std::collections::HashMap<TensorId, TensorId> = bind.iter().copied().collect();
        for (i, info) in other.tensors.iter().enumerate() {
            let id = TensorId(i);
            match info.kind {
                TensorKind::Input if !map.contains_key(&id) => {
                    return Err(Error::Internal(format!(
                        "import: input '{}' is not bound",
                        info.name
                    )));
                }
                TensorKind::Param => {
                    let existing = self
                        .tensors
                        .iter()
                        .position(|t| t.kind == TensorKind::Param && t.name == info.name);
                    let mine = match existing {
                        Some(j)
                            if self.tensors[j].shape == info.shape
                                && self.tensors[j].precision == info.precision =>
                        {
                            TensorId(j)
                        }
                        Some(_) => {
                            return Err(Error::Internal(format!(
                                "import: parameter '{}' exists with another shape or precision",
                                info.name
                            )))
                        }
                        None => self.param_as(&info.name, info.shape.clone(), info.precision),
                    };
                    map.insert(id, mine);
                }
                _ => {}
            }
        }
        let first = self.nodes.len();
        self.stages.extend(
            other
                .stages
                .iter()
                .map(|(name, n)| (name.clone(), first + n)),
        );
        for node in &other.nodes {
            let ins: Vec<TensorId> = node.inputs.iter().map(|t| map[t]).collect();
            let outs = self.apply_arc(node.op.clone(), &ins)?;
            for (o, n) in node.outputs.iter().zip(outs) {
                map.insert(*o, n);
            }
        }
        Ok(map)
    }

    /// Nodes needed to compute `targets`, in execution order (nodes that
    /// mutate state are always kept when their inputs are available).
    pub fn live_nodes(&self, targets: &[TensorId]) -> Vec<usize> {
        let mut needed = vec![false; self.tensors.len()];
        for t in targets {
            needed[t.0] = true;
        }
        let mut keep = vec![false; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate().rev() {
            if !n.op.mutates().is_empty() || n.outputs.iter().any(|o| needed[o.0]) {
                keep[i] = true;
                for t in &n.inputs {
                    needed[t.0] = true;
                }
            }
        }
        (0..self.nodes.len()).filter(|i| keep[*i]).collect()
    }

    /// The order the GPU runs the nodes for `targets`: `live_nodes`, except
    /// that a node which only updates state no other node touches (a
    /// gradient accumulator: it mutates its sum and has no read outputs) runs
    /// right after the last node that writes one of its inputs. In a training
    /// step each gradient is then folded into its sum, and its memory freed,
    /// as soon as the backward pass produces it, so the sums of the last
    /// layers are final early in the backward pass, where their all-reduce
    /// can overlap the rest of it (`jobs::allreduce`). Same results: every
    /// node still runs after everything it reads.
    pub fn schedule(&self, targets: &[TensorId]) -> Vec<usize> {
        let live = self.live_nodes(targets);
        let storage = |t: &TensorId| self.info(*t).storage;
        let mut touched_by: HashMap<TensorId, Vec<usize>> = HashMap::new();
        for &n in &live {
            let node = &self.nodes[n];
            for t in node.inputs.iter().chain(&node.outputs) {
                let nodes = touched_by.entry(storage(t)).or_default();
                if nodes.last() != Some(&n) {
                    nodes.push(n);
                }
            }
        }
        let targeted: HashSet<TensorId> = targets.iter().map(storage).collect();
        let private = |n: usize, t: &TensorId| {
            !targeted.contains(&storage(t)) && touched_by[&storage(t)] == [n]
        };
        let is_sink = |n: usize| {
            let node = &self.nodes[n];
            let mutated = node.op.mutates();
            !mutated.is_empty()
                && node.outputs.iter().all(|t| private(n, t))
                && mutated.iter().all(|&i| private(n, &node.inputs[i]))
        };
        // The live position after which each sink can run; None: at the start.
        let mut last_writer: HashMap<TensorId, usize> = HashMap::new();
        let mut at_start = Vec::new();
        let mut after: Vec<Vec<usize>> = vec![Vec::new(); live.len()];
        for (position, &n) in live.iter().enumerate() {
            let node = &self.nodes[n];
            if is_sink(n) {
                let ready = node
                    .inputs
                    .iter()
                    .filter_map(|t| last_writer.get(&storage(t)).copied())
                    .max();
                match ready {
                    Some(p) => after[p].push(n),
                    None => at_start.push(n),
                }
                continue;
            }
            let mutated = node.op.mutates().iter().map(|&i| &node.inputs[i]);
            for t in node.outputs.iter().chain(mutated) {
                last_writer.insert(storage(t), position);
            }
        }
        let mut order = at_start;
        for (position, &n) in live.iter().enumerate() {
            if !is_sink(n) {
                order.push(n);
                order.append(&mut after[position]);
            }
        }
        order
    }

    /// Total floating-point operations of the given nodes.
    pub fn flops(&self, nodes: &[usize]) -> u64 {
        nodes
            .iter()
            .map(|&i| {
                let n = &self.nodes[i];
                let shapes: Vec<&Shape> = n.inputs.iter().map(|t| self.shape(*t)).collect();
                n.op.flops(&shapes)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise::{Unary, UnaryKind};
    use crate::ops::optim::GradAccumulate;

    #[test]
    fn a_gradient_accumulator_runs_as_soon_as_its_gradient_exists_and_others_keep_their_order() {
        let mut g = Graph::new();
        let x = g.input("x", [4]);
        let keep = g.input("keep", [1]);
        let (sum_a, sum_b) = (g.param("sum.a", [4]), g.param("sum.b", [4]));
        let a = g.apply1(Unary(UnaryKind::Relu), &[x]).unwrap();
        let b = g.apply1(Unary(UnaryKind::Scale(2.0)), &[a]).unwrap();
        let c = g.apply1(Unary(UnaryKind::Relu), &[b]).unwrap();
        let accumulate = GradAccumulate { scale: 1.0 };
        g.apply(accumulate, &[sum_b, b, keep]).unwrap(); // node 3
        g.apply(accumulate, &[sum_a, a, keep]).unwrap(); // node 4
        assert_eq!(g.live_nodes(&[c]), [0, 1, 2, 3, 4]);
        assert_eq!(g.schedule(&[c]), [0, 4, 1, 3, 2]);
        // A sum something else reads stays where it was added.
        let read = g.apply1(Unary(UnaryKind::Relu), &[sum_a]).unwrap();
        assert_eq!(g.schedule(&[c, read]), [0, 1, 3, 2, 4, 5]);
    }
}
