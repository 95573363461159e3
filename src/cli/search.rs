//! `search`: rank a database feature folder for every query.

use std::path::PathBuf;

use clap::Args;

use super::checks;
use super::groups::RerankArgs;
use crate::error::Result;
use crate::gpu::{Gpu, GpuOptions};
use crate::jobs::search::{rerank_and_write, run_search, SearchInputs};
use crate::jobs::shortlist::read_shortlist;

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
    /// Re-rank this shortlist instead of a global search's: a ranking.csv as
    /// `search` writes it (README "Shortlists"), e.g. from
    /// tools/faiss_search.py. Its rows per query replace --k (default: the
    /// global search's top --k).
    #[arg(long, value_name = "FILE", requires = "rerank", conflicts_with = "k")]
    pub shortlist_file: Option<PathBuf>,
    #[command(flatten)]
    pub rerank: RerankArgs,
}

pub(super) fn run(opts: &GpuOptions, a: &SearchArgs) -> Result<()> {
    let rerank = a.rerank.params()?;
    let inputs = SearchInputs::load(&a.queries, &a.db, &a.out)?;
    let (n_queries, n_images) = (inputs.queries.len(), inputs.db.len());
    if let Some(file) = &a.shortlist_file {
        // Read and checked before any device work.
        let hits = read_shortlist(file, &inputs.queries.ids, inputs.db.ids())?;
        let gpu = Gpu::new(opts)?;
        let seconds = rerank_and_write(&gpu, &inputs, hits, rerank, &a.out)?;
        println!(
            "{n_queries} queries against {n_images} images: shortlist {} re-ranked in {seconds:.2} s; results in {}",
            file.display(),
            a.out.display()
        );
        return Ok(());
    }
    let gpu = Gpu::new(opts)?;
    let s = run_search(&gpu, &inputs, a.k, rerank, &a.out)?;
    println!(
        "{n_queries} queries against {n_images} images: global search {:.3} s, re-ranking {:.2} s; results in {}",
        s.global_seconds,
        s.rerank_seconds,
        a.out.display()
    );
    Ok(())
}
