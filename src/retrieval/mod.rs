//! Evaluation of rankings and recognition predictions.

pub mod metrics;
