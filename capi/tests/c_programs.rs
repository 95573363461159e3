//! The C library from C: the example and tests/c/abi.c are compiled with
//! the system's C compiler against include/delg_gpu.h and the built
//! libdelg_gpu, then run on generated images.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use engine::render_scene;

/// The folder holding libdelg_gpu.so (.dylib), built now: `cargo test`
/// builds only this crate's test binaries, not the C library itself (and
/// with dev-dependency features), so the test asks cargo for the library
/// exactly as `cargo build -p delg-gpu-c` makes it. Once per test process.
fn library_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/c_programs-<hash>
        let deps = exe.parent().expect("test binary folder");
        let profile_dir = deps.parent().expect("profile folder");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(name) => name,
            None => panic!("no profile folder above {}", exe.display()),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").into());
        let out = Command::new(&cargo)
            .args(["build", "-p", "delg-gpu-c", "--profile", profile])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap_or_else(|e| panic!("{cargo}: {e}"));
        assert!(
            out.status.success(),
            "cargo build -p delg-gpu-c --profile {profile} failed:\n{}",
            text(&out.stderr)
        );
        let name = format!("{}delg_gpu{}", DLL_PREFIX, DLL_SUFFIX);
        assert!(
            profile_dir.join(&name).is_file(),
            "{} is missing after cargo build",
            profile_dir.join(&name).display()
        );
        profile_dir.to_path_buf()
    })
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// Compiles `source` into `dir` with warnings as errors, linked with the
/// shared library.
fn compile(source: &str, dir: &Path) -> PathBuf {
    let libs = library_dir();
    let search = format!("-L{}", libs.display());
    let rpath = format!("-Wl,-rpath,{}", libs.display());
    compile_with(source, dir, &[&search, &rpath, "-ldelg_gpu", "-lm"])
}

fn compile_with(source: &str, dir: &Path, link: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join(Path::new(source).file_stem().expect("source name"));
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(root.join("include"))
        .arg(root.join(source))
        .args(link)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("running cc (install a C compiler: Debian's build-essential)");
    assert!(
        out.status.success(),
        "cc {source} {} failed:\n{}",
        link.join(" "),
        text(&out.stderr)
    );
    exe
}

/// The static library links with the system libraries docs/c-api.md lists
/// (rustc's native-static-libs on Linux): a program that calls into it
/// links and starts.
#[cfg(target_os = "linux")]
#[test]
fn the_static_library_links_with_the_documented_system_libraries() {
    let dir = scratch("static");
    let archive = library_dir().join("libdelg_gpu.a");
    let archive = archive.to_str().expect("UTF-8 target path");
    let link = [
        archive,
        "-lgcc_s",
        "-lutil",
        "-lrt",
        "-lpthread",
        "-lm",
        "-ldl",
        "-lc",
    ];
    let exe = compile_with("examples/near_duplicates.c", &dir, &link);
    // No arguments: the usage line, before any GPU work.
    let out = run(&exe, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("usage: "),
        "{}",
        text(&out.stderr)
    );
}

fn run(exe: &Path, args: &[&Path]) -> Output {
    Command::new(exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", exe.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_abi_checks_pass_in_c() {
    let dir = scratch("abi");
    let exe = compile("tests/c/abi.c", &dir);
    let image = render_scene(3, 0, 128);
    let png = dir.join("scene.png");
    image.save(&png).expect("writing scene.png");
    let raw = dir.join("scene.rgb");
    std::fs::write(&raw, image.as_raw()).expect("writing scene.rgb");
    let corrupt = dir.join("not-an-image.jpg");
    std::fs::write(&corrupt, b"these bytes are no JPEG").expect("writing not-an-image.jpg");
    let (w, h) = (
        PathBuf::from(image.width().to_string()),
        PathBuf::from(image.height().to_string()),
    );
    let out = run(&exe, &[&png, &raw, &w, &h, &corrupt]);
    assert!(
        out.status.success() && text(&out.stdout).contains("abi: ok"),
        "abi.c failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn the_near_duplicates_example_finds_the_copy_and_names_a_bad_file() {
    let dir = scratch("near-duplicates");
    let exe = compile("examples/near_duplicates.c", &dir);
    let original = dir.join("original.png");
    render_scene(7, 0, 128)
        .save(&original)
        .expect("writing original.png");
    let copy = dir.join("copy.png");
    std::fs::copy(&original, &copy).expect("copying original.png");
    let other = dir.join("other.png");
    render_scene(8, 0, 128)
        .save(&other)
        .expect("writing other.png");

    let tiny = Path::new("--tiny");
    let out = run(&exe, &[tiny, &original, &copy, &other]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "near_duplicates failed:\n{stdout}{}",
        text(&out.stderr)
    );
    // The copy: every keypoint verified. (Random weights make the other
    // image look alike too, so its line is not checked.)
    let keypoints = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{}: ", original.display())))
        .and_then(|rest| rest.strip_suffix(" local features"))
        .unwrap_or_else(|| panic!("no keypoint count for original.png:\n{stdout}"));
    let duplicate = format!(
        "near-duplicates: {} {} (similarity 1.000, {keypoints} of {keypoints} matches verified)",
        original.display(),
        copy.display()
    );
    assert!(
        stdout.contains(&duplicate),
        "the copy was not found:\n{stdout}"
    );
    assert!(
        stdout.contains("near-duplicate pairs among 3 images: "),
        "{stdout}"
    );

    let missing = dir.join("missing.png");
    let out = run(&exe, &[tiny, &original, &missing]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    // (The Vulkan loader may print its own lines first.)
    let expected = format!(
        "near_duplicates: delg_extract_file: {}: ",
        missing.display()
    );
    assert!(stderr.lines().any(|l| l.starts_with(&expected)), "{stderr}");
}

#[test]
fn the_header_compiles_as_cpp() {
    let dir = scratch("cpp");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = dir.join("header.cpp");
    std::fs::write(
        &source,
        "#include \"delg_gpu.h\"\nint main() { return delg_version() == nullptr; }\n",
    )
    .expect("writing header.cpp");
    let out = Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into()))
        .args([
            "-std=c++11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            "-I",
        ])
        .arg(root.join("include"))
        .arg(&source)
        .output()
        .expect("running c++ (install a C++ compiler: Debian's build-essential)");
    assert!(
        out.status.success(),
        "delg_gpu.h in C++:\n{}",
        text(&out.stderr)
    );
}

/// The shared library exports the C API and nothing else: no Rust symbol a
/// program could come to depend on (docs/c-api.md lists these ten).
#[cfg(target_os = "linux")]
#[test]
fn only_the_c_api_is_exported() {
    let library = library_dir().join("libdelg_gpu.so");
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&library)
        .output()
        .expect("running nm (Debian's binutils)");
    assert!(out.status.success(), "nm: {}", text(&out.stderr));
    let mut exported: Vec<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    exported.sort();
    let api = [
        "delg_close",
        "delg_extract_file",
        "delg_extract_rgb",
        "delg_features_free",
        "delg_last_error",
        "delg_match",
        "delg_match_with",
        "delg_open",
        "delg_open_tiny_random",
        "delg_version",
    ];
    assert_eq!(exported, api, "{} exports", library.display());
}
