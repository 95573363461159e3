//! Command-line interface: argument parsing and one-line error reports.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::Result;
use crate::gpu::{list_adapters, Gpu, GpuOptions};
use crate::pipeline::bench;

#[derive(Parser, Debug)]
#[command(
    name = "delg-gpu",
    version,
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
}

impl GpuArgs {
    pub fn options(&self) -> GpuOptions {
        GpuOptions {
            backend: self.backend.clone(),
            adapter: self.adapter.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List adapters with backend, driver, features and the limits that matter.
    Info,
    /// Measure kernels (and, later, end-to-end throughput).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// Every kernel at the shapes that matter, every matmul variant side by side.
    Kernels {
        /// Only cases whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Minimum repetitions per case.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Time budget per case in seconds (more reps while it lasts).
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Print one JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    let opts = cli.gpu.options();
    match cli.command {
        Command::Info => info(&opts),
        Command::Bench {
            what:
                BenchWhat::Kernels {
                    filter,
                    reps,
                    seconds,
                    json,
                },
        } => {
            let gpus = bench::variant_devices(&opts)?;
            if !json {
                bench::print_header(&gpus[0]);
            }
            for case in bench::kernel_cases() {
                if filter
                    .as_ref()
                    .is_some_and(|f| !case.name.contains(f.as_str()))
                {
                    continue;
                }
                for gpu in &gpus {
                    let r = bench::run_case(gpu, &case, reps, Duration::from_secs_f64(seconds))?;
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    } else {
                        bench::print_row(&r);
                    }
                }
            }
            Ok(())
        }
    }
}

fn info(opts: &GpuOptions) -> Result<()> {
    let adapters = list_adapters(opts)?;
    if adapters.is_empty() {
        // Gpu::new turns this into the error that explains how to get a driver.
        Gpu::new(opts)?;
    }
    for (i, a) in adapters.iter().enumerate() {
        let info = a.get_info();
        let l = a.limits();
        let f = a.features();
        let has = |x: wgpu::Features| if f.contains(x) { "yes" } else { "no" };
        println!(
            "[{i}] {} ({:?}, {:?})",
            info.name, info.backend, info.device_type
        );
        println!("    driver: {} {}", info.driver, info.driver_info);
        println!(
            "    features: SHADER_F16 {} | SUBGROUP {} (size {}..{}) | TIMESTAMP_QUERY {}",
            has(wgpu::Features::SHADER_F16),
            has(wgpu::Features::SUBGROUP),
            info.subgroup_min_size,
            info.subgroup_max_size,
            has(wgpu::Features::TIMESTAMP_QUERY)
        );
        println!(
            "    limits: storage binding {} MiB | buffer {} MiB | workgroups/dim {} | invocations/workgroup {} | workgroup memory {} KiB | storage buffers/stage {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroups_per_dimension,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_storage_buffers_per_shader_stage
        );
        let facts = crate::gpu::AdapterFacts {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
        };
        let tuning =
            crate::gpu::Tuning::for_adapter(&facts, f & crate::gpu::device::OPTIONAL_FEATURES);
        println!("    tuning: {}", tuning.describe());
    }
    Ok(())
}
