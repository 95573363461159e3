//! Compiled pipelines, cached by their `ShaderSpec`. Compilation runs inside an
//! error scope so a shader the driver rejects becomes a typed error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::device::Gpu;
use super::shader::ShaderSpec;
use crate::error::{Error, Result};

#[derive(Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<ShaderSpec, Arc<wgpu::ComputePipeline>>>,
}

impl Gpu {
    /// The pipeline for `spec`, compiled on first use.
    pub fn pipeline(&self, spec: &ShaderSpec) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.pipelines.map.lock().map_err(poisoned)?.get(spec) {
            return Ok(p.clone());
        }
        let missing = spec.required_features()? - self.features;
        if !missing.is_empty() {
            return Err(Error::unsupported(
                spec.label(),
                format!("the adapter lacks {missing:?}; choose a kernel variant without it"),
            ));
        }
        let source = spec.source()?;
        let label = spec.label();
        let pipeline = self
            .scoped(&format!("compiling {label}"), || {
                let module = self
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(&label),
                        source: wgpu::ShaderSource::Wgsl(source.into()),
                    });
                self.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&label),
                        layout: None,
                        module: &module,
                        entry_point: Some(spec.entry),
                        compilation_options: Default::default(),
                        cache: self.pipeline_store.as_ref().map(|s| &s.cache),
                    })
            })
            .map_err(|e| Error::Shader {
                name: label.clone(),
                detail: e.to_string(),
            })?;
        if let Some(store) = &self.pipeline_store {
            store.note_compiled();
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines
            .map
            .lock()
            .map_err(poisoned)?
            .insert(spec.clone(), pipeline.clone());
        Ok(pipeline)
    }

    /// The file that keeps this adapter's compiled pipelines across runs, if any.
    pub fn pipeline_cache_file(&self) -> Option<&std::path::Path> {
        self.pipeline_store.as_ref().map(|s| s.file())
    }

    pub fn cached_pipelines(&self) -> usize {
        self.pipelines.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Internal("pipeline cache lock poisoned by an earlier panic".into())
}
