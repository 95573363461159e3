//! `search`: rank a database feature folder for every query.

use std::path::PathBuf;

use clap::Args;

use super::checks;
use super::groups::RerankArgs;
use crate::error::Result;
use crate::gpu::{Gpu, GpuOptions};
use crate::jobs::search::{run_search, SearchInputs};

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Query feature folder (from `extract`).
    #[arg(long)]
    pub queries: PathBuf,
    /// Database feature folder (from `extract`), or a folder of shard folders
    /// (from `extract --shard`), searched in place without merging.
    #[arg(long)]
    pub db: PathBuf,
    /// Output folder: ranking.csv, ranks.npy, scores.npy, inliers.npy.
    #[arg(long)]
    pub out: PathBuf,
    /// Results kept per query.
    #[arg(long, value_parser = checks::int_in::<usize, 1, 100_000>, default_value_t = 100)]
    pub k: usize,
    #[command(flatten)]
    pub rerank: RerankArgs,
}

pub(super) fn run(opts: &GpuOptions, a: &SearchArgs) -> Result<()> {
    let rerank = a.rerank.params()?;
    let inputs = SearchInputs::load(&a.queries, &a.db, &a.out)?;
    let gpu = Gpu::new(opts)?;
    let s = run_search(&gpu, &inputs, a.k, rerank, &a.out)?;
    println!(
        "{} queries against {} images: global search {:.3} s, re-ranking {:.2} s; results in {}",
        inputs.queries.len(),
        inputs.db.len(),
        s.global_seconds,
        s.rerank_seconds,
        a.out.display()
    );
    Ok(())
}
