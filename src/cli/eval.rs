//! `eval`: retrieval scores on a ground truth.

use std::path::PathBuf;

use clap::Args;

use super::groups::{ExtractFlags, RerankArgs};
use crate::error::Result;
use crate::gpu::GpuOptions;
use crate::jobs::eval::{print_report, run_eval, score_gldv2, EvalJob, Gldv2Task};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Ground truth in the gnd.json form; images are found beside it.
    #[arg(long)]
    pub gnd: PathBuf,
    /// Extract features with these weights (a file, or a model fetched with
    /// `delg-gpu weights get`; default without --db-features: the model set
    /// by `delg-gpu weights default`) into --work...
    #[arg(long, value_parser = super::weights::weights_path)]
    pub weights: Option<PathBuf>,
    /// ...or use existing feature folders (default: extract into --work).
    #[arg(long)]
    pub db_features: Option<PathBuf>,
    /// Query feature folder to use with --db-features (from `extract
    /// --queries-of`; default: the queries are looked up in --db-features).
    #[arg(long)]
    pub query_features: Option<PathBuf>,
    /// Folder for extracted features (reused and resumed across runs).
    #[arg(long, default_value = "delg-eval")]
    pub work: PathBuf,
    #[command(flatten)]
    pub settings: ExtractFlags,
    #[command(flatten)]
    pub rerank: RerankArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(opts: &GpuOptions, a: &EvalArgs) -> Result<()> {
    // Without features to score, the default model extracts them.
    let weights = match (&a.weights, &a.db_features) {
        (None, None) => Some(super::weights::weights_or_default(None)?),
        (w, _) => w.clone(),
    };
    let mut extract = match &weights {
        Some(w) => crate::jobs::extract::defaults_for_weights(w)?.1,
        None => Default::default(),
    };
    a.settings.apply(&mut extract)?;
    let gpu = super::open_gpu(opts)?;
    let job = EvalJob {
        gnd: a.gnd.clone(),
        weights,
        db_features: a.db_features.clone(),
        query_features: a.query_features.clone(),
        work: a.work.clone(),
        extract,
        rerank: a.rerank.params()?,
    };
    let report = run_eval(&gpu, &job)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_report(&report);
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ScoreGldv2Args {
    /// Which challenge the files are for.
    #[arg(long, value_enum)]
    pub task: Gldv2Task,
    /// Solution CSV (id,landmarks,Usage or id,images,Usage).
    #[arg(long)]
    pub solution: PathBuf,
    /// Predictions CSV in the challenge's submission format (id,landmarks
    /// with "<class> <score>", or id,images with space-separated index ids).
    #[arg(long)]
    pub predictions: PathBuf,
    /// Print the scores as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run_score_gldv2(a: &ScoreGldv2Args) -> Result<()> {
    let scores = score_gldv2(a.task, &a.solution, &a.predictions)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&scores).unwrap_or_default()
        );
        return Ok(());
    }
    let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    for s in &scores {
        let metrics = match a.task {
            Gldv2Task::Recognition => format!(
                "GAP {}, GAP over landmark queries only {}, top-1 accuracy {}",
                show(s.gap),
                show(s.gap_landmark_queries_only),
                show(s.top1_accuracy)
            ),
            Gldv2Task::Retrieval => format!("mAP@100 {}", show(s.map_at_100)),
        };
        println!(
            "{:<8} {} queries, {} predicted: {metrics}",
            s.split, s.queries, s.predictions
        );
    }
    Ok(())
}
