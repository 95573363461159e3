// Embeds every shaders/*.wgsl into the binary as a (name, source) table, so
// adding a kernel family is adding a file; and writes the ops registry: every
// shader with an entry point pairs with the ops module of the same name, whose
// shader specs and uniform blocks the naga tests check (a shader without its
// module does not compile).
use std::{env, fs, path::Path};

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    git_commit();
    let mut names: Vec<String> = fs::read_dir("shaders")
        .expect("shaders/ directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    names.sort();
    let root = env::var("CARGO_MANIFEST_DIR").expect("manifest dir");
    let mut table = String::from("pub static SHADER_SOURCES: &[(&str, &str)] = &[\n");
    for n in &names {
        let path = Path::new(&root).join("shaders").join(n);
        println!("cargo:rerun-if-changed={}", path.display());
        table.push_str(&format!(
            "    ({:?}, include_str!({:?})),\n",
            n.trim_end_matches(".wgsl"),
            path.display().to_string()
        ));
    }
    table.push_str("];\n");
    let out = Path::new(&env::var("OUT_DIR").expect("out dir")).to_path_buf();
    fs::write(out.join("shaders.rs"), table).expect("write table");

    let families: Vec<&str> = names
        .iter()
        .filter(|n| {
            let src =
                fs::read_to_string(Path::new(&root).join("shaders").join(n)).expect("read shader");
            src.contains("@compute")
        })
        .map(|n| n.trim_end_matches(".wgsl"))
        .collect();
    let mut registry = String::from(
        "/// Every shader specialisation any op can compile.\npub fn all_shader_specs() -> Vec<crate::gpu::ShaderSpec> {\n    let mut specs = Vec::new();\n",
    );
    for f in &families {
        registry.push_str(&format!("    specs.extend({f}::shader_specs());\n"));
    }
    registry.push_str("    specs\n}\n\n/// The Rust side of the uniform block a spec's entry point reads.\npub fn uniform_shape(spec: &crate::gpu::ShaderSpec) -> Option<crate::gpu::UniformShape> {\n    match spec.file {\n");
    for f in &families {
        registry.push_str(&format!(
            "        {f:?} => {f}::uniform_shape(spec.entry),\n"
        ));
    }
    registry.push_str("        _ => None,\n    }\n}\n");
    fs::write(out.join("ops_registry.rs"), registry).expect("write registry");
}

/// Sets DELG_GIT_COMMIT for `--version`: the short commit hash, or "unknown"
/// when building outside a git checkout or without git (never an error).
fn git_commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DELG_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: a checkout changes HEAD, a commit the branch ref.
    let mut watched = vec!["HEAD".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        // A missing file (a packed ref) would rerun this script on every build.
        let path = git(&["rev-parse", "--git-path", &name]).filter(|p| Path::new(p).exists());
        if let Some(path) = path {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
