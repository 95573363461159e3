//! Command-line interface: the argument definitions of every command and
//! thin handlers that check them, call one job and print its summary.
//!
//! A new command is a variant of `Command` (its arguments in a struct of its
//! own file) and one arm in `run`.

use clap::{Args, Parser, Subcommand};

use crate::error::Result;
use crate::gpu::GpuOptions;

mod bench;
mod checks;
mod demo;
mod eval;
mod extract;
mod groups;
mod init;
mod pair;
mod search;
mod train;
mod weights;

pub use bench::BenchWhat;
pub use demo::DemoArgs;
pub use eval::{EvalArgs, ScoreGldv2Args};
pub use extract::{ExtractArgs, MergeArgs};
pub use groups::{ExtractFlags, ModelArgs, RerankArgs, VerifyArgs};
pub use init::InitArgs;
pub use pair::MatchArgs;
pub use search::SearchArgs;
pub use train::TrainArgs;
pub use weights::{ImportArgs, WeightsCommand};

#[derive(Parser, Debug)]
#[command(
    name = "delg-gpu",
    version = crate::VERSION,
    about = "DELG/DOLG image retrieval on any GPU (wgpu + WGSL)"
)]
pub struct Cli {
    #[command(flatten)]
    pub gpu: GpuArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GpuArgs {
    /// Graphics API: vulkan, metal, dx12 or gl (default: WGPU_BACKEND, else the best available).
    #[arg(long, global = true)]
    pub backend: Option<String>,
    /// Adapter name substring or index from `delg-gpu info` (default: WGPU_ADAPTER_NAME, else the best).
    #[arg(long, global = true)]
    pub adapter: Option<String>,
    /// Compile every GPU pipeline afresh instead of keeping them across runs in the user's cache folder (DELG_GPU_CACHE_DIR, else e.g. ~/.cache/delg-gpu/pipelines).
    #[arg(long, global = true)]
    pub no_pipeline_cache: bool,
}

impl GpuArgs {
    pub fn options(&self) -> GpuOptions {
        let options = GpuOptions {
            backend: self.backend.clone(),
            adapter: self.adapter.clone(),
            ..Default::default()
        };
        if self.no_pipeline_cache {
            options
        } else {
            options.with_user_pipeline_cache()
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List adapters with backend, driver, features and the limits that matter.
    Info,
    /// The whole pipeline on a generated image set: extract, search, re-rank and score.
    Demo(DemoArgs),
    /// Extract DELG global descriptors and local features from a folder of images.
    Extract(ExtractArgs),
    /// Join the outputs of sharded extractions into one feature folder.
    Merge(MergeArgs),
    /// Write a randomly initialised model (for tests, benchmarks and fine-tuning from scratch).
    InitWeights(InitArgs),
    /// Train DELG end to end from image-level labels.
    Train(TrainArgs),
    /// Rank a database for every query by global similarity, optionally re-ranked by local matching + RANSAC.
    Search(SearchArgs),
    /// Score retrieval on a ground truth (gnd.json): global and re-ranked, side by side.
    Eval(EvalArgs),
    /// Score Google Landmarks v2 challenge predictions (Kaggle CSV) against a
    /// solution CSV: recognition GAP and top-1, or retrieval mAP@100, per split.
    ScoreGldv2(ScoreGldv2Args),
    /// Match two images: local features, RANSAC, and a picture of the correspondences.
    Match(MatchArgs),
    /// Model weights: list and fetch the public models, import a checkpoint without Python.
    Weights {
        #[command(subcommand)]
        what: WeightsCommand,
    },
    /// Measure kernels, extraction, search and matching on this adapter.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

/// Opens the device for a job and, when it is a CPU emulation, says so in one
/// line on stderr: a user who waits minutes should know why.
fn open_gpu(opts: &GpuOptions) -> Result<std::sync::Arc<crate::gpu::Gpu>> {
    let gpu = crate::gpu::Gpu::new(opts)?;
    if let Some(note) = gpu.facts.emulation_note(opts.backend.is_some()) {
        eprintln!("{note}");
    }
    Ok(gpu)
}

/// How a command that finished ended; errors are the `Err` of `run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked for was done.
    Complete,
    /// The run finished but some images were skipped (listed in errors.txt).
    SomeFailed,
}

impl Outcome {
    /// The process exit code (README, "Exit codes"): 0 complete, 3 some
    /// images skipped; errors exit with 1 and bad arguments with 2 (clap).
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Complete => 0,
            Outcome::SomeFailed => 3,
        }
    }
}

pub fn run(cli: Cli) -> Result<Outcome> {
    let gpu = cli.gpu.options();
    let done = |()| Outcome::Complete;
    match cli.command {
        Command::Info => crate::jobs::bench::print_adapters(&gpu).map(done),
        Command::Demo(a) => demo::run(&gpu, &a).map(done),
        Command::Extract(a) => extract::run(&gpu, &a),
        Command::Merge(a) => extract::merge(&a).map(done),
        Command::InitWeights(a) => init::run(&a).map(done),
        Command::Train(a) => train::run(&gpu, &a).map(done),
        Command::Search(a) => search::run(&gpu, &a).map(done),
        Command::Eval(a) => eval::run(&gpu, &a).map(done),
        Command::ScoreGldv2(a) => eval::run_score_gldv2(&a).map(done),
        Command::Match(a) => pair::run(&gpu, &a).map(done),
        Command::Weights { what } => weights::run(what).map(done),
        Command::Bench { what } => bench::run(&gpu, what).map(done),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `help` and `version` come from clap; every other argument of every
    /// (sub)command must say what it is in `--help`.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if a.get_help().is_none() && !matches!(id, "help" | "version") {
                out.push(format!("{path}: {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            undocumented(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_has_help_text() {
        let mut missing = Vec::new();
        undocumented(&super::Cli::command(), "delg-gpu", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }

    /// Options that take a value and are neither required nor defaulted by
    /// clap (which prints `[default: ...]` itself), as "command: --name".
    fn silent_defaults(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let takes_value = a.get_num_args().is_some_and(|n| n.takes_values());
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            if takes_value
                && !a.is_positional()
                && !a.is_required_set()
                && a.get_default_values().is_empty()
                && !help.to_lowercase().contains("default")
            {
                out.push(format!(
                    "{path}: --{}",
                    a.get_long().unwrap_or(a.get_id().as_str())
                ));
            }
        }
        for sub in cmd.get_subcommands() {
            silent_defaults(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    /// An optional value's help says what happens without it (README gap
    /// list, issue 18): "(default: ...)" or "no default".
    #[test]
    fn every_optional_value_says_its_default() {
        // Built, so that every argument knows its number of values.
        let mut cli = super::Cli::command();
        cli.build();
        let mut silent = Vec::new();
        silent_defaults(&cli, "delg-gpu", &mut silent);
        assert!(
            silent.is_empty(),
            "options whose help hides the default: {silent:#?}"
        );
    }

    #[test]
    fn version_names_the_commit_or_says_it_is_unknown() {
        let version = super::Cli::command().render_version();
        let commit = version
            .trim()
            .strip_prefix(&format!("delg-gpu {} (commit ", env!("CARGO_PKG_VERSION")))
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected --version: {version}"));
        let hash = commit.len() >= 4 && commit.chars().all(|c| c.is_ascii_hexdigit());
        assert!(hash || commit == "unknown", "{version}");
    }

    #[test]
    fn the_argument_definitions_are_consistent() {
        super::Cli::command().debug_assert();
    }
}
