use clap::Parser;

fn main() {
    let cli = delg_gpu::cli::Cli::parse();
    if let Err(e) = delg_gpu::cli::run(cli) {
        eprintln!("delg-gpu: error: {e}");
        std::process::exit(1);
    }
}
