// Embeds every shaders/*.wgsl into the binary as a (name, source) table, so
// adding a kernel family is adding a file.
use std::{env, fs, path::Path};

fn main() {
    println!("cargo:rerun-if-changed=shaders");
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
    fs::write(
        Path::new(&env::var("OUT_DIR").expect("out dir")).join("shaders.rs"),
        table,
    )
    .expect("write table");
}
