//! The jobs users run (extraction, training, search, evaluation, matching,
//! benchmarks), each built on the model and engine layers below it.

pub mod allreduce;
pub mod bench;
pub mod collection;
pub mod dataset;
pub mod demo;
pub mod distributed;
pub mod eval;
pub mod extract;
pub mod gpu_report;
pub mod local_match;
pub mod merge;
pub mod pair;
pub mod scheduler;
pub mod search;
pub mod sharded;
pub mod shortlist;
pub mod train;
pub mod weights_get;
pub mod weights_import;
