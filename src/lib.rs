//! delg-gpu: DELG and DOLG image retrieval on any GPU through wgpu, with
//! hand-written WGSL kernels and a small graph scheduler.

pub mod cli;
pub mod error;
pub mod gpu;
pub mod graph;
pub mod io;
pub mod jobs;
pub mod model;
pub mod ops;
pub mod retrieval;
pub mod tensor;
#[cfg(any(test, feature = "test-harness"))]
pub mod testing;

pub use error::{Error, Result};
