//! Running a graph: on the GPU through a planned, recorded `Executable`, or on
//! the f64 references (`reference::eval_reference`) to check it.

use std::collections::HashMap;
use std::sync::Arc;

use super::plan::{plan_storages, MemoryPlan, StoragePlan};
use super::{Graph, TensorId, TensorKind};
use crate::error::{Error, Result};
use crate::gpu::buffer::Readback;
use crate::gpu::{DeviceTensor, Gpu, Recorder, Recording, ScratchNeed};
use crate::tensor::{HostTensor, Precision, Shape};

/// Persistent tensors by name: weights, optimiser state, running statistics.
/// Shared by every plan built for the same model, whatever the input shape.
#[derive(Default)]
pub struct ParamStore {
    pub tensors: HashMap<String, DeviceTensor>,
}

impl ParamStore {
    pub fn insert(&mut self, gpu: &Gpu, name: &str, value: &HostTensor) -> Result<()> {
        self.insert_as(gpu, name, value, Precision::F32)
    }
    /// Uploads `value` stored at `precision`.
    pub fn insert_as(
        &mut self,
        gpu: &Gpu,
        name: &str,
        value: &HostTensor,
        precision: Precision,
    ) -> Result<()> {
        self.tensors.insert(
            name.to_string(),
            DeviceTensor::upload_as(gpu, value, precision)?,
        );
        Ok(())
    }
    pub fn get(&self, name: &str) -> Option<&DeviceTensor> {
        self.tensors.get(name)
    }
}

/// A graph compiled for one set of input shapes: buffers allocated by the
/// memory plan, every dispatch recorded once, replayed by `run`.
pub struct Executable {
    gpu: Arc<Gpu>,
    graph: Graph,
    tensors: HashMap<TensorId, DeviceTensor>,
    recording: Recording,
    /// Dispatches, and recording steps (dispatches, copies, clears), each
    /// node of the schedule recorded, in order.
    node_dispatches: Vec<usize>,
    node_steps: Vec<usize>,
    pub schedule: Vec<usize>,
    pub memory: MemoryPlan,
    /// Bytes the computed tensors would take without reuse.
    pub unplanned_bytes: u64,
    owned_input_bytes: u64,
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
        Self::with_inputs(gpu, graph, targets, params, &HashMap::new())
    }

    /// Like `new`, with the inputs in `bound` read from the tensors given
    /// there: plans that share an input (every level of one image's pyramid)
    /// take it from one buffer, uploaded once.
    pub fn with_inputs(
        gpu: &Arc<Gpu>,
        graph: &Graph,
        targets: &[TensorId],
        params: &ParamStore,
        bound: &HashMap<TensorId, DeviceTensor>,
    ) -> Result<Executable> {
        let mut tensors: HashMap<TensorId, DeviceTensor> = HashMap::new();
        for (i, info) in graph.tensors.iter().enumerate() {
            let id = TensorId(i);
            match info.kind {
                TensorKind::Param => {
                    let p = params.get(&info.name).ok_or_else(|| {
                        Error::Internal(format!("parameter '{}' was not loaded", info.name))
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
                    if p.precision != info.precision {
                        return Err(Error::Internal(format!(
                            "parameter '{}' is stored in {}, the graph reads {}",
                            info.name,
                            p.precision.name(),
                            info.precision.name()
                        )));
                    }
                    tensors.insert(id, p.clone());
                }
                TensorKind::Input => {
                    let tensor = match bound.get(&id) {
                        Some(t) if t.shape == info.shape => t.clone(),
                        Some(t) => {
                            return Err(Error::shape(
                                "bound input",
                                format!(
                                    "'{}' is {:?}, the graph expects {:?}",
                                    info.name, t.shape, info.shape
                                ),
                            ))
                        }
                        None => DeviceTensor::zeros(gpu, info.shape.clone())?,
                    };
                    tensors.insert(id, tensor);
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
                        precision: info.precision,
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

        gpu.reserve_scratch(&scratch_needs(gpu, graph, &schedule)?)?;
        let Recorded {
            recording,
            node_dispatches,
            node_steps,
        } = record_nodes(gpu, graph, &tensors, &schedule)?;
        let unplanned_bytes = life_list.iter().map(|l| l.bytes).sum();
        let owned_input_bytes = graph
            .tensors
            .iter()
            .enumerate()
            .filter(|(i, t)| t.kind == TensorKind::Input && !bound.contains_key(&TensorId(*i)))
            .map(|(_, t)| t.shape.bytes())
            .sum();
        let flops = graph.flops(&schedule);
        let exe = Executable {
            gpu: gpu.clone(),
            graph: graph.clone(),
            tensors,
            recording,
            node_dispatches,
            node_steps,
            schedule,
            memory,
            unplanned_bytes,
            owned_input_bytes,
            flops,
        };
        if debug_level() >= 1 {
            exe.print_plan();
        }
        Ok(exe)
    }

    /// The schedule and the memory plan on stderr (`DELG_DEBUG=1`).
    fn print_plan(&self) {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        eprintln!(
            "plan: {} nodes, {:.2} GFLOP, {} dispatches",
            self.schedule.len(),
            self.flops as f64 / 1e9,
            self.recording.stats.dispatches
        );
        for (step, &n) in self.schedule.iter().enumerate() {
            let node = &self.graph.nodes[n];
            let shapes = |ts: &[TensorId]| -> Vec<Vec<usize>> {
                ts.iter()
                    .map(|t| self.graph.shape(*t).dims().to_vec())
                    .collect()
            };
            eprintln!(
                "  {step:>4} [{}] {} {:?} -> {:?}",
                self.graph.stage_of(n),
                node.op.name(),
                shapes(&node.inputs),
                shapes(&node.outputs)
            );
        }
        eprintln!(
            "memory: {} slots, {:.1} MiB planned for {:.1} MiB of computed tensors; device scratch {:.1} MiB",
            self.memory.slot_bytes.len(),
            mib(self.memory.total_bytes()),
            mib(self.unplanned_bytes),
            mib(self.gpu.scratch_bytes())
        );
        for (i, b) in self.memory.slot_bytes.iter().enumerate() {
            eprintln!("  slot {i:>3} {:>10.2} MiB", mib(*b));
        }
    }

    fn tensor(&self, t: TensorId) -> Result<&DeviceTensor> {
        self.tensors
            .get(&t)
            .ok_or_else(|| Error::Internal(format!("tensor {t:?} is not part of this plan")))
    }

    pub fn set_input(&self, t: TensorId, value: &HostTensor) -> Result<()> {
        let dst = self.tensor(t)?;
        if dst.precision != Precision::F32 {
            return Err(Error::Internal("inputs are fed as f32".into()));
        }
        if dst.shape != value.shape {
            return Err(Error::shape(
                "input",
                format!("expected {:?}, got {:?}", dst.shape, value.shape),
            ));
        }
        self.gpu
            .write(&dst.buffer, dst.offset, bytemuck::cast_slice(&value.data));
        Ok(())
    }

    /// Appends the recorded work to `enc`; the caller submits it (see
    /// `Gpu::submit_and_read`).
    pub fn encode(&self, enc: &mut wgpu::CommandEncoder) {
        self.recording.encode_into(&self.gpu, enc);
    }

    /// Appends the recorded work of the schedule's positions `positions`
    /// (nodes `schedule[positions]`) to `enc`: runs that submit the plan in
    /// segments encode consecutive ranges that together cover the schedule.
    pub fn encode_part(&self, enc: &mut wgpu::CommandEncoder, positions: std::ops::Range<usize>) {
        let first: usize = self.node_steps[..positions.start].iter().sum();
        let count: usize = self.node_steps[positions].iter().sum();
        self.recording
            .encode_steps_into(&self.gpu, enc, first..first + count);
    }

    /// A readback of `targets`, made once and encoded after every run.
    /// Its targets must be f32: callers decode the bytes as f32.
    pub fn readback(&self, targets: &[TensorId]) -> Result<Readback> {
        let tensors: Vec<&DeviceTensor> = targets
            .iter()
            .map(|t| self.tensor(*t))
            .collect::<Result<_>>()?;
        if let Some(t) = tensors.iter().find(|t| t.precision != Precision::F32) {
            return Err(Error::Internal(format!(
                "a readback of a {} tensor {:?}: cast graph outputs to f32",
                t.precision.name(),
                t.shape
            )));
        }
        Readback::new(&self.gpu, &tensors)
    }

    /// Submits the recorded work and waits for it.
    pub fn run(&self) -> Result<()> {
        if debug_level() >= 2 {
            return self.run_profiled();
        }
        self.recording.submit(&self.gpu)?;
        self.gpu.wait()
    }

    /// `DELG_DEBUG=2`: runs with every node timed and prints each node's time.
    fn run_profiled(&self) -> Result<()> {
        eprintln!("run: {} per node", self.timing_source());
        for (step, (name, shape, flops, seconds)) in self.profile()?.into_iter().enumerate() {
            eprintln!(
                "  {step:>4} {name:<28} {:>9.3} ms {:>8.2} GFLOP/s  -> {:?}",
                seconds * 1e3,
                flops as f64 / seconds.max(1e-9) / 1e9,
                shape.dims()
            );
        }
        Ok(())
    }

    /// What `profile` measures on this device.
    pub fn timing_source(&self) -> &'static str {
        if self.gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            "device time from timestamp queries (one pass per dispatch)"
        } else {
            "host time, one submission per node (no timestamp queries)"
        }
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
            let recording = record_nodes(&self.gpu, &self.graph, &self.tensors, &nodes)?.recording;
            let t = std::time::Instant::now();
            recording.submit(&self.gpu)?;
            self.gpu.wait()?;
            out.push((name.to_string(), t.elapsed().as_secs_f64()));
        }
        Ok(out)
    }

    /// Device bytes this plan holds: its activation slots and the inputs it
    /// owns (parameters and bound inputs are shared and not counted).
    pub fn device_bytes(&self) -> u64 {
        self.memory.slot_bytes.iter().sum::<u64>() + self.owned_input_bytes
    }

    pub fn read(&self, t: TensorId) -> Result<HostTensor> {
        self.tensor(t)?.download(&self.gpu)
    }

    pub fn stats(&self) -> crate::gpu::RecordStats {
        self.recording.stats
    }

    /// The kernel of every recorded dispatch (`file::entry[defines]`), in order.
    pub fn kernels(&self) -> &[String] {
        &self.recording.labels
    }

    /// Runs the plan once with every node timed, for finding the slow
    /// kernels: `(op label, output shape, FLOPs, seconds)` in schedule order.
    /// Device time from timestamp queries where the adapter has them, else
    /// host time with one submission per node. The results equal those of `run`.
    pub fn profile(&self) -> Result<Vec<(String, Shape, u64, f64)>> {
        let device = self.recording.time_dispatches(&self.gpu)?;
        let mut dispatch_seconds = device.iter().flatten().copied();
        let mut out = Vec::new();
        for (&n, &dispatches) in self.schedule.iter().zip(&self.node_dispatches) {
            let node = &self.graph.nodes[n];
            let seconds = if device.is_some() {
                dispatch_seconds.by_ref().take(dispatches).sum()
            } else {
                let recording =
                    record_nodes(&self.gpu, &self.graph, &self.tensors, &[n])?.recording;
                let t = std::time::Instant::now();
                recording.submit(&self.gpu)?;
                self.gpu.wait()?;
                t.elapsed().as_secs_f64()
            };
            let shapes: Vec<&Shape> = node.inputs.iter().map(|t| self.graph.shape(*t)).collect();
            let shape = node
                .outputs
                .first()
                .map(|o| self.graph.shape(*o).clone())
                .unwrap_or_default();
            out.push((
                node.op.profile_label(&shapes),
                shape,
                node.op.flops(&shapes),
                seconds,
            ));
        }
        Ok(out)
    }
}

/// `DELG_DEBUG`: 1 prints every plan's schedule and memory, 2 also times
/// every node of every run (one submission per node: slower, same results).
fn debug_level() -> u32 {
    static LEVEL: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        std::env::var("DELG_DEBUG")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// The scratch memory `nodes` declare (`Op::scratch`), unmerged.
pub fn scratch_needs(gpu: &Gpu, graph: &Graph, nodes: &[usize]) -> Result<Vec<ScratchNeed>> {
    let mut needs = Vec::new();
    for &n in nodes {
        let node = &graph.nodes[n];
        let shapes: Vec<&Shape> = node.inputs.iter().map(|t| graph.shape(*t)).collect();
        needs.extend(node.op.scratch(gpu, &shapes)?);
    }
    Ok(needs)
}

/// The recording of some nodes and what each node put in it.
struct Recorded {
    recording: Recording,
    node_dispatches: Vec<usize>,
    node_steps: Vec<usize>,
}

/// Records the dispatches of `nodes`, in order, over the tensors' buffers.
fn record_nodes(
    gpu: &Gpu,
    graph: &Graph,
    tensors: &HashMap<TensorId, DeviceTensor>,
    nodes: &[usize],
) -> Result<Recorded> {
    gpu.counters
        .recording(|| record_nodes_uncounted(gpu, graph, tensors, nodes))
}

fn record_nodes_uncounted(
    gpu: &Gpu,
    graph: &Graph,
    tensors: &HashMap<TensorId, DeviceTensor>,
    nodes: &[usize],
) -> Result<Recorded> {
    let mut rec = Recorder::new(gpu);
    let mut dispatches = Vec::with_capacity(nodes.len());
    let mut steps = Vec::with_capacity(nodes.len());
    for &n in nodes {
        let node = &graph.nodes[n];
        let get = |t: &TensorId| {
            tensors
                .get(t)
                .ok_or_else(|| Error::Internal(format!("tensor {t:?} has no buffer")))
        };
        let ins: Vec<&DeviceTensor> = node.inputs.iter().map(get).collect::<Result<_>>()?;
        let outs: Vec<&DeviceTensor> = node.outputs.iter().map(get).collect::<Result<_>>()?;
        let (dispatches_before, steps_before) = (rec.dispatches(), rec.commands());
        node.op.record(&mut rec, &ins, &outs)?;
        dispatches.push(rec.dispatches() - dispatches_before);
        steps.push(rec.commands() - steps_before);
    }
    Ok(Recorded {
        recording: rec.finish()?,
        node_dispatches: dispatches,
        node_steps: steps,
    })
}

/// Runs one op eagerly on the GPU: upload, record, run, download.
pub fn run_op(
    gpu: &Arc<Gpu>,
    op: Arc<dyn super::Op>,
    inputs: &[&HostTensor],
) -> Result<Vec<HostTensor>> {
    run_op_stored(gpu, op, inputs, &vec![Precision::F32; inputs.len()])
}

/// `run_op` with input i uploaded at `precisions[i]`; outputs are stored as
/// the op says and read back as f32.
pub fn run_op_stored(
    gpu: &Arc<Gpu>,
    op: Arc<dyn super::Op>,
    inputs: &[&HostTensor],
    precisions: &[Precision],
) -> Result<Vec<HostTensor>> {
    let shapes: Vec<&Shape> = inputs.iter().map(|t| &t.shape).collect();
    let out_shapes = op.infer(&shapes)?;
    let out_precision = op.output_precision(precisions)?;
    let ins: Vec<DeviceTensor> = inputs
        .iter()
        .zip(precisions)
        .map(|(t, p)| DeviceTensor::upload_as(gpu, t, *p))
        .collect::<Result<_>>()?;
    let outs: Vec<DeviceTensor> = out_shapes
        .into_iter()
        .map(|s| DeviceTensor::zeros_as(gpu, s, out_precision))
        .collect::<Result<_>>()?;
    gpu.reserve_scratch(&op.scratch(gpu, &shapes)?)?;
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
