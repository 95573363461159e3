//! Records the dispatches of a whole forward or backward run, then builds one
//! uniform buffer for all their parameters, their bind groups, and a single
//! submission. A `Recording` can be submitted again without re-recording, which
//! is how cached plans replay.

use std::sync::Arc;

use super::counters::Count;
use super::device::Gpu;
use super::shader::ShaderSpec;
use super::window::{BufSlice, Window};
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub enum Binding {
    Buffer(BufSlice),
    Texture(wgpu::TextureView),
}

impl From<&Window> for Binding {
    fn from(w: &Window) -> Self {
        Binding::Buffer(w.slice.clone())
    }
}

impl From<BufSlice> for Binding {
    fn from(s: BufSlice) -> Self {
        Binding::Buffer(s)
    }
}

enum Command {
    Dispatch {
        pipeline: Arc<wgpu::ComputePipeline>,
        params: (u64, u64),
        bindings: Vec<Binding>,
        groups: [u32; 3],
        label: String,
    },
    Copy {
        src: BufSlice,
        dst: BufSlice,
    },
    CopyToTexture {
        src: BufSlice,
        bytes_per_row: u32,
        texture: wgpu::Texture,
        first_row: u32,
        extent: wgpu::Extent3d,
    },
    Clear {
        slice: BufSlice,
    },
}

pub struct Recorder<'g> {
    gpu: &'g Gpu,
    params: Vec<u8>,
    commands: Vec<Command>,
    dispatches: usize,
}

/// Dispatch and copy counts of a recording, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordStats {
    pub dispatches: usize,
    pub copies: usize,
    pub passes: usize,
}

enum Step {
    Dispatch {
        pipeline: Arc<wgpu::ComputePipeline>,
        bind_group: wgpu::BindGroup,
        groups: [u32; 3],
    },
    Copy {
        src: BufSlice,
        dst: BufSlice,
    },
    CopyToTexture {
        src: BufSlice,
        bytes_per_row: u32,
        texture: wgpu::Texture,
        first_row: u32,
        extent: wgpu::Extent3d,
    },
    Clear {
        slice: BufSlice,
    },
}

pub struct Recording {
    steps: Vec<Step>,
    pub stats: RecordStats,
    pub labels: Vec<String>,
}

impl<'g> Recorder<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        Recorder {
            gpu,
            params: Vec::new(),
            commands: Vec::new(),
            dispatches: 0,
        }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Workgroup grid for `groups` workgroups, folded into 2-D when one
    /// dimension would exceed `max_compute_workgroups_per_dimension`; kernels
    /// recover the linear index as `wid.x + wid.y * nwg.x` and skip overflow.
    pub fn grid(&self, groups: u64) -> Result<[u32; 3]> {
        let max = self.gpu.limits.max_compute_workgroups_per_dimension as u64;
        let groups = groups.max(1);
        if groups <= max {
            return Ok([groups as u32, 1, 1]);
        }
        let y = groups.div_ceil(max);
        if y > max {
            return Err(Error::LimitExceeded {
                what: "a dispatch".into(),
                needed: groups,
                limit: max * max,
                name: "max_compute_workgroups_per_dimension squared",
                fix: "split the work (a bug: please report it)".into(),
            });
        }
        Ok([groups.div_ceil(y) as u32, y as u32, 1])
    }

    /// Records one dispatch: binding 0 is the `params` uniform, the rest follow in order.
    pub fn dispatch(
        &mut self,
        spec: &ShaderSpec,
        params: &[u8],
        bindings: Vec<Binding>,
        groups: [u32; 3],
    ) -> Result<()> {
        let pipeline = self.gpu.pipeline(spec)?;
        let align = self.gpu.limits.min_uniform_buffer_offset_alignment as usize;
        let start = self.params.len().div_ceil(align) * align;
        self.params.resize(start, 0);
        self.params.extend_from_slice(params);
        let len = params.len().max(16).div_ceil(16) * 16;
        self.params.resize(start + len, 0);
        self.dispatches += 1;
        self.commands.push(Command::Dispatch {
            pipeline,
            params: (start as u64, len as u64),
            bindings,
            groups,
            label: spec.label(),
        });
        Ok(())
    }

    /// Records a dispatch of `groups` workgroups laid out by `grid`.
    pub fn dispatch_groups(
        &mut self,
        spec: &ShaderSpec,
        params: &[u8],
        bindings: Vec<Binding>,
        groups: u64,
    ) -> Result<()> {
        let g = self.grid(groups)?;
        self.dispatch(spec, params, bindings, g)
    }

    pub fn copy(&mut self, src: BufSlice, dst: BufSlice) {
        self.commands.push(Command::Copy { src, dst });
    }

    /// Copies rows of texels from a buffer into `texture`, starting at its row `first_row`.
    pub fn copy_to_texture(
        &mut self,
        src: BufSlice,
        bytes_per_row: u32,
        texture: wgpu::Texture,
        first_row: u32,
        extent: wgpu::Extent3d,
    ) {
        self.commands.push(Command::CopyToTexture {
            src,
            bytes_per_row,
            texture,
            first_row,
            extent,
        });
    }

    pub fn clear(&mut self, slice: BufSlice) {
        self.commands.push(Command::Clear { slice });
    }

    /// Dispatches recorded so far.
    pub fn dispatches(&self) -> usize {
        self.dispatches
    }

    /// Commands (dispatches, copies, clears) recorded so far: the step index
    /// the next command will have in the recording.
    pub fn commands(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Builds the parameter buffer and bind groups.
    pub fn finish(self) -> Result<Recording> {
        let gpu = self.gpu;
        let params = gpu.upload_init(
            "params",
            if self.params.is_empty() {
                &[0u8; 16]
            } else {
                &self.params
            },
            wgpu::BufferUsages::UNIFORM,
        );
        let mut stats = RecordStats::default();
        let mut labels = Vec::new();
        let mut in_pass = false;
        let steps = gpu.scoped("building bind groups", || -> Vec<Step> {
            self.commands
                .into_iter()
                .map(|c| match c {
                    Command::Dispatch {
                        pipeline,
                        params: (off, len),
                        bindings,
                        groups,
                        label,
                    } => {
                        let layout = pipeline.get_bind_group_layout(0);
                        let mut entries = vec![wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &params,
                                offset: off,
                                size: wgpu::BufferSize::new(len),
                            }),
                        }];
                        for (i, b) in bindings.iter().enumerate() {
                            let resource = match b {
                                Binding::Buffer(s) => {
                                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                        buffer: &s.buffer,
                                        offset: s.offset,
                                        size: wgpu::BufferSize::new(s.size),
                                    })
                                }
                                Binding::Texture(v) => wgpu::BindingResource::TextureView(v),
                            };
                            entries.push(wgpu::BindGroupEntry {
                                binding: i as u32 + 1,
                                resource,
                            });
                        }
                        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some(&label),
                            layout: &layout,
                            entries: &entries,
                        });
                        gpu.counters.add(Count::BindGroup, 1);
                        stats.dispatches += 1;
                        if !in_pass {
                            stats.passes += 1;
                            in_pass = true;
                        }
                        labels.push(label);
                        Step::Dispatch {
                            pipeline,
                            bind_group,
                            groups,
                        }
                    }
                    Command::Copy { src, dst } => {
                        stats.copies += 1;
                        in_pass = false;
                        Step::Copy { src, dst }
                    }
                    Command::CopyToTexture {
                        src,
                        bytes_per_row,
                        texture,
                        first_row,
                        extent,
                    } => {
                        stats.copies += 1;
                        in_pass = false;
                        Step::CopyToTexture {
                            src,
                            bytes_per_row,
                            texture,
                            first_row,
                            extent,
                        }
                    }
                    Command::Clear { slice } => {
                        stats.copies += 1;
                        in_pass = false;
                        Step::Clear { slice }
                    }
                })
                .collect()
        })?;
        Ok(Recording {
            steps,
            stats,
            labels,
        })
    }

    /// Records, submits and waits: the eager path used by tests and one-off ops.
    pub fn run(self) -> Result<RecordStats> {
        let gpu = self.gpu;
        let rec = self.finish()?;
        rec.submit(gpu)?;
        gpu.wait()?;
        Ok(rec.stats)
    }
}

/// Timestamps one query set may hold (wgpu's `QUERY_SET_MAX_QUERIES`).
const MAX_QUERIES: usize = 4096;

impl Recording {
    /// Encodes every step into one command buffer and submits it.
    pub fn submit(&self, gpu: &Gpu) -> Result<wgpu::SubmissionIndex> {
        gpu.counters.submitted();
        gpu.counters.recording(|| self.submit_uncounted(gpu))
    }

    /// Encodes every step into `enc`, for callers that submit several
    /// recordings, or a recording and its readback, at once.
    pub fn encode_into(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder) {
        self.encode_steps_into(gpu, enc, 0..self.steps.len());
    }

    /// Encodes steps `steps` (dispatches, copies and clears in recording
    /// order) into `enc`: a part of the work, for callers that submit it in
    /// segments.
    pub fn encode_steps_into(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        steps: std::ops::Range<usize>,
    ) {
        gpu.counters.recording(|| self.encode(enc, steps, None));
    }

    fn submit_uncounted(&self, gpu: &Gpu) -> Result<wgpu::SubmissionIndex> {
        gpu.scoped("submitting GPU work", || {
            let mut enc = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("delg-gpu run"),
                });
            self.encode(&mut enc, 0..self.steps.len(), None);
            gpu.queue.submit([enc.finish()])
        })
    }

    /// Runs the recording once with timestamps around every dispatch, each
    /// in a pass of its own so that no two overlap, and returns each
    /// dispatch's device seconds in order; None where the adapter has no
    /// timestamp queries.
    pub fn time_dispatches(&self, gpu: &Gpu) -> Result<Option<Vec<f64>>> {
        if !gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Ok(None);
        }
        let tick = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        let is_dispatch = |s: &Step| matches!(s, Step::Dispatch { .. });
        let mut seconds = Vec::with_capacity(self.stats.dispatches);
        let mut start = 0;
        while start < self.steps.len() {
            // As many steps as hold MAX_QUERIES / 2 dispatches.
            let (mut end, mut dispatches) = (start, 0);
            while end < self.steps.len()
                && !(dispatches == MAX_QUERIES / 2 && is_dispatch(&self.steps[end]))
            {
                dispatches += is_dispatch(&self.steps[end]) as usize;
                end += 1;
            }
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            if dispatches == 0 {
                self.encode(&mut enc, start..end, None);
                gpu.queue.submit([enc.finish()]);
                start = end;
                continue;
            }
            let queries = 2 * dispatches as u32;
            let (set, resolved) = gpu.scoped("creating timestamp queries", || {
                let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("dispatch timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: queries,
                });
                let resolved = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("resolved timestamps"),
                    size: queries as u64 * 8,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                (set, resolved)
            })?;
            self.encode(&mut enc, start..end, Some(&set));
            enc.resolve_query_set(&set, 0..queries, &resolved, 0);
            gpu.queue.submit([enc.finish()]);
            let bytes = gpu.read_bytes(&resolved, 0, queries as u64 * 8)?;
            let stamps: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
            seconds.extend(
                stamps
                    .chunks_exact(2)
                    .map(|t| t[1].saturating_sub(t[0]) as f64 * tick),
            );
            start = end;
        }
        Ok(Some(seconds))
    }

    /// Encodes `steps[range]`: consecutive dispatches share one compute pass,
    /// or with `stamps` each gets a pass whose start and end it timestamps.
    fn encode(
        &self,
        enc: &mut wgpu::CommandEncoder,
        range: std::ops::Range<usize>,
        stamps: Option<&wgpu::QuerySet>,
    ) {
        let mut i = range.start;
        let mut query = 0;
        while i < range.end {
            if let Step::Dispatch { .. } = self.steps[i] {
                let timestamp_writes = stamps.map(|query_set| wgpu::ComputePassTimestampWrites {
                    query_set,
                    beginning_of_pass_write_index: Some(query),
                    end_of_pass_write_index: Some(query + 1),
                });
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes,
                });
                while let Some(Step::Dispatch {
                    pipeline,
                    bind_group,
                    groups,
                }) = self.steps[..range.end].get(i)
                {
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, bind_group, &[]);
                    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                    i += 1;
                    if stamps.is_some() {
                        query += 2;
                        break;
                    }
                }
                continue;
            }
            match &self.steps[i] {
                Step::Copy { src, dst } => enc.copy_buffer_to_buffer(
                    &src.buffer,
                    src.offset,
                    &dst.buffer,
                    dst.offset,
                    src.size,
                ),
                Step::CopyToTexture {
                    src,
                    bytes_per_row,
                    texture,
                    first_row,
                    extent,
                } => enc.copy_buffer_to_texture(
                    wgpu::TexelCopyBufferInfo {
                        buffer: &src.buffer,
                        layout: wgpu::TexelCopyBufferLayout {
                            offset: src.offset,
                            bytes_per_row: Some(*bytes_per_row),
                            rows_per_image: None,
                        },
                    },
                    wgpu::TexelCopyTextureInfo {
                        origin: wgpu::Origin3d {
                            x: 0,
                            y: *first_row,
                            z: 0,
                        },
                        ..texture.as_image_copy()
                    },
                    *extent,
                ),
                Step::Clear { slice } => {
                    enc.clear_buffer(&slice.buffer, slice.offset, Some(slice.size))
                }
                Step::Dispatch { .. } => unreachable!("handled above"),
            }
            i += 1;
        }
    }
}
