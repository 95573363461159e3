//! The host CPU as benchmarks report it: its model and vector units, beside
//! the adapter, because on CPU drivers such as lavapipe the CPU is the device
//! (the same build runs 2× apart on CPUs with one or two AVX-512 FMA units).

/// The CPU model name, e.g. "Intel(R) Xeon(R) Processor", or "unknown CPU".
pub fn cpu_model() -> String {
    #[cfg(target_os = "linux")]
    {
        if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
            if let Some(name) = model_name(&info) {
                return name;
            }
        }
    }
    "unknown CPU".into()
}

/// The "model name" line of /proc/cpuinfo text.
fn model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name" && !value.trim().is_empty()).then(|| value.trim().to_string())
    })
}

/// The widest SIMD extension for f32 the CPU has (what bounds llvmpipe and BLAS).
pub fn vector_units() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512F";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "AVX2+FMA";
        }
        if std::arch::is_x86_feature_detected!("avx") {
            return "AVX";
        }
        "SSE"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "NEON"
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "unknown vector units"
    }
}

/// "model (units, N logical CPUs)" for report headers.
pub fn describe_cpu() -> String {
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{} ({}, {threads} logical CPUs)",
        cpu_model(),
        vector_units()
    )
}

/// The environment variable llvmpipe reads its SIMD width from, once, when
/// the Vulkan driver loads.
pub const WIDTH_VAR: &str = "LP_NATIVE_VECTOR_WIDTH";

/// Where this process's llvmpipe vector width came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WidthChoice {
    /// LP_NATIVE_VECTOR_WIDTH was set before delg-gpu looked: it always wins.
    User(String),
    /// delg-gpu asked for 512 bits because the CPU has AVX-512F.
    Auto512,
    /// Left to llvmpipe (256 bits on AVX2 CPUs).
    DriverDefault,
}

static CHOICE: std::sync::OnceLock<WidthChoice> = std::sync::OnceLock::new();

/// Chooses llvmpipe's vector width before the first wgpu instance loads the
/// driver: 512 bits on CPUs with AVX-512F, where the 16-lane
/// subgroup-broadcast kernels ran 1.3-1.5× more GFLOP per CPU-second than the
/// 8-lane ones at 256 bits (an Emerald Rapids Xeon, BENCHMARKS.md), unless
/// LP_NATIVE_VECTOR_WIDTH is already set (LP_NATIVE_VECTOR_WIDTH=256 keeps
/// llvmpipe's default). Other Vulkan drivers ignore the variable.
pub fn choose_llvmpipe_width() -> &'static WidthChoice {
    CHOICE.get_or_init(|| match std::env::var(WIDTH_VAR) {
        Ok(v) => WidthChoice::User(v),
        Err(_) if vector_units() == "AVX-512F" => {
            // Runs once, before wgpu (or anything of ours) has started a thread
            // that could read the environment concurrently.
            std::env::set_var(WIDTH_VAR, "512");
            WidthChoice::Auto512
        }
        Err(_) => WidthChoice::DriverDefault,
    })
}

/// Why llvmpipe runs at the width it reports, for `delg-gpu info`.
pub fn width_reason() -> String {
    match choose_llvmpipe_width() {
        WidthChoice::User(v) => format!("{WIDTH_VAR}={v} was set by the user"),
        WidthChoice::Auto512 => format!(
            "chosen by delg-gpu because the CPU has AVX-512F, where 512 bits measured faster; \
             {WIDTH_VAR}=256 overrides"
        ),
        WidthChoice::DriverDefault => format!(
            "llvmpipe's default: the CPU has {}, not AVX-512F; {WIDTH_VAR}=512 overrides",
            vector_units()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_name_is_read_from_cpuinfo() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu\n";
        assert_eq!(
            model_name(info).as_deref(),
            Some("Intel(R) Xeon(R) Processor")
        );
        assert_eq!(model_name("processor : 0\nmodel name :  \n"), None);
        assert!(!describe_cpu().is_empty());
    }
}
