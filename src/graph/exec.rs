//! Running a graph: on the GPU through a planned, recorded `Executable`, or on
//! the f64 references (`eval_reference`) to check it.

use std::collections::HashMap;
use std::sync::Arc;

use super::plan::{plan_memory, Lifetime, MemoryPlan};
use super::{Graph, TensorId, TensorKind};
use crate::error::{Error, Result};
use crate::gpu::{DeviceTensor, Gpu, Recorder, Recording};
use crate::tensor::{HostTensor, RefTensor, Shape};

/// Persistent tensors by name: weights, optimiser state, running statistics.
/// Shared by every plan built for the same model, whatever the input shape.
#[derive(Default)]
pub struct ParamStore {
    pub tensors: HashMap<String, DeviceTensor>,
}

impl ParamStore {
    pub fn insert(&mut self, gpu: &Gpu, name: &str, value: &HostTensor) -> Result<()> {
        self.tensors
            .insert(name.to_string(), DeviceTensor::upload(gpu, value)?);
        Ok(())
    }
    pub fn get(&self, name: &str) -> Option<&DeviceTensor> {
        self.tensors.get(name)
    }
}

/// Where the computed tensors of a graph live, decided without a device.
pub struct StoragePlan {
    /// Nodes to run, in order.
    pub schedule: Vec<usize>,
    /// Computed storages (views excluded), in the order of `memory.slot_of`.
    pub storages: Vec<TensorId>,
    pub lifetimes: Vec<Lifetime>,
    pub memory: MemoryPlan,
}

/// Plans the computed tensors needed for `targets`: each storage lives from
/// the step that writes it to the last step that reads it (targets to the
/// end), and storages with disjoint lives share a slot.
pub fn plan_storages(graph: &Graph, targets: &[TensorId]) -> StoragePlan {
    let schedule = graph.live_nodes(targets);
    let mut lives: HashMap<TensorId, Lifetime> = HashMap::new();
    for (step, &n) in schedule.iter().enumerate() {
        let node = &graph.nodes[n];
        for o in &node.outputs {
            let st = graph.info(*o).storage;
            if graph.info(st).kind == TensorKind::Computed {
                lives.entry(st).or_insert(Lifetime {
                    bytes: graph.shape(st).bytes(),
                    first: step,
                    last: step,
                });
            }
        }
        for i in &node.inputs {
            if let Some(l) = lives.get_mut(&graph.info(*i).storage) {
                l.last = step;
            }
        }
    }
    for t in targets {
        if let Some(l) = lives.get_mut(&graph.info(*t).storage) {
            l.last = usize::MAX;
        }
    }
    let mut storages: Vec<TensorId> = lives.keys().copied().collect();
    storages.sort();
    let lifetimes: Vec<Lifetime> = storages.iter().map(|s| lives[s]).collect();
    let memory = plan_memory(&lifetimes);
    StoragePlan {
        schedule,
        storages,
        lifetimes,
        memory,
    }
}

/// A graph compiled for one set of input shapes: buffers allocated by the
/// memory plan, every dispatch recorded once, replayed by `run`.
pub struct Executable {
    gpu: Arc<Gpu>,
    graph: Graph,
    tensors: HashMap<TensorId, DeviceTensor>,
    recording: Recording,
    pub schedule: Vec<usize>,
    pub memory: MemoryPlan,
    /// Bytes the computed tensors would take without reuse.
    pub unplanned_bytes: u64,
    pub flops: u64,
}

impl Executable {
    /// Plans and records the nodes needed for `targets`. Params are taken from
    /// `params` by name (a missing one is an error); inputs get fresh buffers.
    pub fn new(
        gpu: &Arc<Gpu>,
        graph: &Graph,
        targets: &[TensorId],
        params: &ParamStore,
    ) -> Result<Executable> {
        let mut tensors: HashMap<TensorId, DeviceTensor> = HashMap::new();
        for (i, info) in graph.tensors.iter().enumerate() {
            let id = TensorId(i);
            match info.kind {
                TensorKind::Param => {
                    let p = params.get(&info.name).ok_or_else(|| {
                        Error::Graph(format!("parameter '{}' was not loaded", info.name))
                    })?;
                    if p.shape != info.shape {
                        return Err(Error::shape(
                            "parameters",
                            format!(
                                "'{}' has shape {:?}, the graph expects {:?}",
                                info.name, p.shape, info.shape
                            ),
                        ));
                    }
                    tensors.insert(id, p.clone());
                }
                TensorKind::Input => {
                    tensors.insert(id, DeviceTensor::zeros(gpu, info.shape.clone())?);
                }
                TensorKind::Computed => {}
            }
        }

        let StoragePlan {
            schedule,
            storages,
            lifetimes: life_list,
            memory,
        } = plan_storages(graph, targets);
        let slots: Vec<wgpu::Buffer> = memory
            .slot_bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| gpu.storage_buffer(&format!("slot {i}"), b))
            .collect::<Result<_>>()?;
        let slot_of: HashMap<TensorId, usize> = storages
            .iter()
            .zip(&memory.slot_of)
            .map(|(s, &slot)| (*s, slot))
            .collect();
        for (i, info) in graph.tensors.iter().enumerate() {
            if info.kind != TensorKind::Computed {
                continue;
            }
            let id = TensorId(i);
            if let Some(&slot) = slot_of.get(&info.storage) {
                tensors.insert(
                    id,
                    DeviceTensor {
                        shape: info.shape.clone(),
                        buffer: slots[slot].clone(),
                        offset: 0,
                    },
                );
            } else if let Some(base) = tensors.get(&info.storage).cloned() {
                // A view of an input or a parameter.
                tensors.insert(
                    id,
                    DeviceTensor {
                        shape: info.shape.clone(),
                        ..base
                    },
                );
            }
        }

        let recording = record_nodes(gpu, graph, &tensors, &schedule)?;
        let unplanned_bytes = life_list.iter().map(|l| l.bytes).sum();
        let flops = graph.flops(&schedule);
        Ok(Executable {
            gpu: gpu.clone(),
            graph: graph.clone(),
            tensors,
            recording,
            schedule,
            memory,
            unplanned_bytes,
            flops,
        })
    }

    fn tensor(&self, t: TensorId) -> Result<&DeviceTensor> {
        self.tensors
            .get(&t)
            .ok_or_else(|| Error::Graph(format!("tensor {t:?} is not part of this plan")))
    }

    pub fn set_input(&self, t: TensorId, value: &HostTensor) -> Result<()> {
        let dst = self.tensor(t)?;
        if dst.shape != value.shape {
            return Err(Error::shape(
                "input",
                format!("expected {:?}, got {:?}", dst.shape, value.shape),
            ));
        }
        self.gpu
            .queue
            .write_buffer(&dst.buffer, dst.offset, bytemuck::cast_slice(&value.data));
        Ok(())
    }

    /// Submits the recorded work and waits for it.
    pub fn run(&self) -> Result<()> {
        self.recording.submit(&self.gpu)?;
        self.gpu.wait()
    }

    /// Runs like `run`, one submission per stage of the graph (see
    /// `Graph::begin_stage`), and returns each stage's wall-clock seconds in
    /// order. Recording the stages is not timed.
    pub fn run_stages(&self) -> Result<Vec<(String, f64)>> {
        let mut stages: Vec<(&str, Vec<usize>)> = Vec::new();
        for &n in &self.schedule {
            let name = self.graph.stage_of(n);
            match stages.last_mut() {
                Some((last, nodes)) if *last == name => nodes.push(n),
                _ => stages.push((name, vec![n])),
            }
        }
        let mut out = Vec::new();
        for (name, nodes) in stages {
            let recording = record_nodes(&self.gpu, &self.graph, &self.tensors, &nodes)?;
            let t = std::time::Instant::now();
            recording.submit(&self.gpu)?;
            self.gpu.wait()?;
            out.push((name.to_string(), t.elapsed().as_secs_f64()));
        }
        Ok(out)
    }

    /// Device bytes this plan holds: its activation slots and its inputs
    /// (parameters are shared and not counted).
    pub fn device_bytes(&self) -> u64 {
        let inputs: u64 = self
            .graph
            .tensors
            .iter()
            .filter(|t| t.kind == TensorKind::Input)
            .map(|t| t.shape.bytes())
            .sum();
        self.memory.slot_bytes.iter().sum::<u64>() + inputs
    }

    pub fn read(&self, t: TensorId) -> Result<HostTensor> {
        self.tensor(t)?.download(&self.gpu)
    }

    pub fn stats(&self) -> crate::gpu::RecordStats {
        self.recording.stats
    }

    /// Runs every node on its own and times it (submit + wait each), for
    /// finding the slow kernels: `(op name, output shape, FLOPs, seconds)`
    /// in schedule order. The results equal those of `run`.
    pub fn profile(&self) -> Result<Vec<(String, Shape, u64, f64)>> {
        let mut out = Vec::new();
        for &n in &self.schedule {
            let node = &self.graph.nodes[n];
            let recording = record_nodes(&self.gpu, &self.graph, &self.tensors, &[n])?;
            let t = std::time::Instant::now();
            recording.submit(&self.gpu)?;
            self.gpu.wait()?;
            let shapes: Vec<&Shape> = node.inputs.iter().map(|t| self.graph.shape(*t)).collect();
            let shape = node
                .outputs
                .first()
                .map(|o| self.graph.shape(*o).clone())
                .unwrap_or_default();
            out.push((
                node.op.name().to_string(),
                shape,
                node.op.flops(&shapes),
                t.elapsed().as_secs_f64(),
            ));
        }
        Ok(out)
    }
}

/// Records the dispatches of `nodes`, in order, over the tensors' buffers.
fn record_nodes(
    gpu: &Gpu,
    graph: &Graph,
    tensors: &HashMap<TensorId, DeviceTensor>,
    nodes: &[usize],
) -> Result<Recording> {
    let mut rec = Recorder::new(gpu);
    for &n in nodes {
        let node = &graph.nodes[n];
        let get = |t: &TensorId| {
            tensors
                .get(t)
                .ok_or_else(|| Error::Graph(format!("tensor {t:?} has no buffer")))
        };
        let ins: Vec<&DeviceTensor> = node.inputs.iter().map(get).collect::<Result<_>>()?;
        let outs: Vec<&DeviceTensor> = node.outputs.iter().map(get).collect::<Result<_>>()?;
        node.op.record(&mut rec, &ins, &outs)?;
    }
    rec.finish()
}

/// Evaluates the nodes needed for `targets` with the f64 references. `values`
/// holds inputs and params on entry, and every computed tensor on return;
/// mutated inputs are updated in place.
pub fn eval_reference(
    graph: &Graph,
    targets: &[TensorId],
    values: &mut HashMap<TensorId, RefTensor>,
) -> Result<()> {
    for n in graph.live_nodes(targets) {
        let node = &graph.nodes[n];
        let ins: Vec<&RefTensor> = node
            .inputs
            .iter()
            .map(|t| {
                values
                    .get(t)
                    .ok_or_else(|| Error::Graph(format!("no value for '{}'", graph.info(*t).name)))
            })
            .collect::<Result<_>>()?;
        let mut outs = node.op.reference(&ins)?;
        let mutated = node.op.mutates();
        if outs.len() != node.outputs.len() + mutated.len() {
            return Err(Error::Graph(format!(
                "{} reference returned {} tensors",
                node.op.name(),
                outs.len()
            )));
        }
        let new_state = outs.split_off(node.outputs.len());
        for (&i, v) in mutated.iter().zip(new_state) {
            values.insert(node.inputs[i], v);
        }
        for (t, v) in node.outputs.iter().zip(outs) {
            debug_assert_eq!(&v.shape, graph.shape(*t));
            values.insert(*t, v);
        }
    }
    Ok(())
}

/// Runs one op eagerly on the GPU: upload, record, run, download.
pub fn run_op(
    gpu: &Arc<Gpu>,
    op: Arc<dyn super::Op>,
    inputs: &[&HostTensor],
) -> Result<Vec<HostTensor>> {
    let shapes: Vec<&Shape> = inputs.iter().map(|t| &t.shape).collect();
    let out_shapes = op.infer(&shapes)?;
    let ins: Vec<DeviceTensor> = inputs
        .iter()
        .map(|t| DeviceTensor::upload(gpu, t))
        .collect::<Result<_>>()?;
    let outs: Vec<DeviceTensor> = out_shapes
        .into_iter()
        .map(|s| DeviceTensor::zeros(gpu, s))
        .collect::<Result<_>>()?;
    let mut rec = Recorder::new(gpu);
    op.record(
        &mut rec,
        &ins.iter().collect::<Vec<_>>(),
        &outs.iter().collect::<Vec<_>>(),
    )?;
    rec.run()?;
    let mut result: Vec<HostTensor> = outs
        .iter()
        .map(|o| o.download(gpu))
        .collect::<Result<_>>()?;
    for &i in op.mutates() {
        result.push(ins[i].download(gpu)?);
    }
    Ok(result)
}
