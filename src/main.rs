use clap::Parser;

fn main() {
    let cli = delg_gpu::cli::Cli::parse();
    match delg_gpu::cli::run(cli) {
        Ok(outcome) => std::process::exit(outcome.exit_code()),
        Err(e) => {
            eprintln!("delg-gpu: error: {e}");
            std::process::exit(1);
        }
    }
}
