use clap::Parser;

fn main() {
    quiet_vulkan_loader();
    let cli = delg_gpu::cli::Cli::parse();
    match delg_gpu::cli::run(cli) {
        Ok(outcome) => std::process::exit(outcome.exit_code()),
        Err(e) => {
            eprintln!("delg-gpu: error: {e}");
            std::process::exit(1);
        }
    }
}

/// Without XDG_RUNTIME_DIR (batch jobs, containers, cron) the Vulkan loader
/// prints "XDG_RUNTIME_DIR is invalid or not set" for every instance, which
/// buries delg-gpu's one-line messages; a private directory silences it.
/// Runs before any thread starts, as changing the environment requires.
fn quiet_vulkan_loader() {
    #[cfg(unix)]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let dir = std::env::temp_dir().join(format!("delg-gpu-runtime-{uid}"));
        let private = || {
            use std::os::unix::fs::{DirBuilderExt, MetadataExt};
            std::fs::DirBuilder::new().mode(0o700).create(&dir).ok();
            let meta = std::fs::metadata(&dir).ok()?;
            (meta.is_dir() && meta.uid() == uid && meta.mode() & 0o077 == 0).then_some(())
        };
        if private().is_some() {
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
}
