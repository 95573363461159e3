//! `delg-gpu weights get` against a local HTTP server on 127.0.0.1 (no
//! network): the TF2 and PyTorch converter fixtures served as a registry's
//! downloads, the SHA-256 refusal of a corrupted file, the resume of a
//! download cut in half, and `--weights NAME` extracting the same features
//! as the Python-converted file.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fixture;
use delg_gpu::testing::test_gpu;
use sha2::{Digest, Sha256};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delg-get-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A file server on 127.0.0.1 for `connections` requests at most. It
/// honours `Range: bytes=N-`, and the first answer for a path in `cut`
/// stops after that many bytes while its Content-Length promises all.
struct Server {
    base: String,
    /// The Range header of each request ("" without one), in order.
    ranges: Arc<Mutex<Vec<String>>>,
}

fn serve(
    files: HashMap<String, Vec<u8>>,
    cut: HashMap<String, usize>,
    connections: usize,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        let mut cut = cut;
        for stream in listener.incoming().take(connections) {
            let Ok(stream) = stream else { continue };
            let _ = answer(stream, &files, &mut cut, &seen);
        }
    });
    Server { base, ranges }
}

fn answer(
    mut stream: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    cut: &mut HashMap<String, usize>,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = String::new();
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = value.trim().to_string();
            }
        }
    }
    seen.lock().unwrap().push(range.clone());
    let Some(body) = files.get(&path) else {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let start: usize = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
        .min(body.len());
    let head = if range.is_empty() {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
    } else {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len() - 1,
            body.len(),
            body.len() - start
        )
    };
    stream.write_all(head.as_bytes())?;
    let end = cut
        .remove(&path)
        .map_or(body.len(), |n| (start + n).min(body.len()));
    stream.write_all(&body[start..end])?;
    stream.flush()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A SavedModel as the official tarballs hold it: a folder with
/// saved_model.pb and variables/. The import reads only variables/, so the
/// graph file here is a placeholder; the variables are the TF2 fixture's.
fn saved_model_tar_gz() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let add = |tar: &mut tar::Builder<_>, name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes).unwrap();
    };
    add(&mut tar, "r50delg_tiny/saved_model.pb", b"placeholder");
    for file in ["variables.index", "variables.data-00000-of-00001"] {
        let bytes = std::fs::read(fixture("convert_tf2/exported/variables", file)).unwrap();
        add(&mut tar, &format!("r50delg_tiny/variables/{file}"), &bytes);
    }
    tar.into_inner().unwrap().finish().unwrap()
}

struct Entry<'a> {
    name: &'a str,
    format: &'a str,
    path: &'a str,
    sha256: String,
}

fn write_registry(dir: &Path, server: &Server, entries: &[Entry]) -> PathBuf {
    let mut text = String::new();
    for e in entries {
        text += &format!(
            "[[model]]\nname = \"{}\"\ndescription = \"test\"\narch = \"delg\"\nformat = \"{}\"\nurl = \"{}{}\"\npage = \"test\"\nsha256 = \"{}\"\nlicence = \"test\"\n\n",
            e.name, e.format, server.base, e.path, e.sha256
        );
    }
    let path = dir.join("registry.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the binary with the test registry and data directory; (success, stdout + stderr).
fn delg(dir: &Path, registry: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_delg-gpu"))
        .args(args)
        .env("DELG_GPU_REGISTRY", registry)
        .env("DELG_GPU_DATA_DIR", dir.join("data"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn get_downloads_verifies_and_converts_to_the_python_converters_bytes() {
    let tgz = saved_model_tar_gz();
    let torch = std::fs::read(fixture("convert", "torch_source.pth")).unwrap();
    let files = HashMap::from([
        ("/delg-tiny.tar.gz".to_string(), tgz.clone()),
        ("/delg-tiny.pth".to_string(), torch.clone()),
    ]);
    let server = serve(files, HashMap::new(), 8);
    let dir = temp("convert");
    let registry = write_registry(
        &dir,
        &server,
        &[
            Entry {
                name: "tf2-tiny",
                format: "tf2-savedmodel-tar-gz",
                path: "/delg-tiny.tar.gz",
                sha256: sha256(&tgz),
            },
            Entry {
                name: "torch-tiny",
                format: "torch-delg",
                path: "/delg-tiny.pth",
                sha256: sha256(&torch),
            },
        ],
    );
    let (ok, text) = delg(&dir, &registry, &["weights", "get", "tf2-tiny"]);
    assert!(ok && text.contains("verified"), "{text}");
    let kept = dir.join("data/tf2-tiny.safetensors");
    assert!(
        std::fs::read(&kept).unwrap()
            == std::fs::read(fixture("convert", "tf2_weights.safetensors")).unwrap()
    );
    let out = dir.join("torch.safetensors");
    let (ok, text) = delg(
        &dir,
        &registry,
        &[
            "weights",
            "get",
            "torch-tiny",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{text}");
    assert!(
        std::fs::read(&out).unwrap()
            == std::fs::read(fixture("convert", "torch_weights.safetensors")).unwrap()
    );
    let (ok, text) = delg(&dir, &registry, &["weights", "list"]);
    assert!(
        ok && text
            .lines()
            .any(|l| l.starts_with("tf2-tiny") && l.contains("fetched")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("torch-tiny") && !l.contains("fetched")),
        "{text}"
    );
    // The unpacked SavedModel is gone; the verified download stays for a rerun.
    let downloads: Vec<_> = std::fs::read_dir(dir.join("data/downloads"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(downloads.len(), 2, "{downloads:?}");
}

/// A server holding one file and a registry naming it as model `name`.
struct OneModel {
    server: Server,
    dir: PathBuf,
    registry: PathBuf,
}

impl OneModel {
    /// `served` as model `name` with `recorded` as its SHA-256; the first
    /// answer stops after `cut` bytes when given.
    fn new(
        test: &str,
        name: &str,
        format: &str,
        served: Vec<u8>,
        recorded: String,
        cut: Option<usize>,
    ) -> OneModel {
        let path = format!("/{name}.download");
        let cut = cut
            .map(|n| HashMap::from([(path.clone(), n)]))
            .unwrap_or_default();
        let server = serve(HashMap::from([(path.clone(), served)]), cut, 8);
        let dir = temp(test);
        let registry = write_registry(
            &dir,
            &server,
            &[Entry {
                name,
                format,
                path: &path,
                sha256: recorded,
            }],
        );
        OneModel {
            server,
            dir,
            registry,
        }
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        delg(&self.dir, &self.registry, args)
    }
}

#[test]
fn a_corrupted_download_is_refused_and_removed() {
    let torch = std::fs::read(fixture("convert", "torch_source.pth")).unwrap();
    let mut corrupted = torch.clone();
    corrupted[1000] ^= 0x40;
    let m = OneModel::new(
        "corrupt",
        "w",
        "torch-delg",
        corrupted.clone(),
        sha256(&torch),
        None,
    );
    let (ok, text) = m.run(&["weights", "get", "w"]);
    assert!(
        !ok && text.contains(&format!("records {}", sha256(&torch))) && text.contains("removed"),
        "{text}"
    );
    assert!(!m.dir.join("data/w.safetensors").exists());
    assert_eq!(
        std::fs::read_dir(m.dir.join("data/downloads"))
            .unwrap()
            .count(),
        0
    );
    // A registry without a checksum is refused unless told otherwise.
    let m = OneModel::new(
        "unverified",
        "w",
        "torch-delg",
        corrupted,
        String::new(),
        None,
    );
    let (ok, text) = m.run(&["weights", "get", "w"]);
    assert!(!ok && text.contains("--accept-unverified"), "{text}");
}

#[test]
fn a_download_cut_in_half_resumes_where_it_stopped() {
    let tgz = saved_model_tar_gz();
    let half = tgz.len() / 2;
    let m = OneModel::new(
        "resume",
        "m",
        "tf2-savedmodel-tar-gz",
        tgz.clone(),
        sha256(&tgz),
        Some(half),
    );
    let (ok, text) = m.run(&["weights", "get", "m"]);
    assert!(
        !ok && text.contains(&m.server.base)
            && text.contains("resume")
            && text.contains("weights import"),
        "{text}"
    );
    let partial = m.dir.join("data/downloads/m-m.download");
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), half as u64);
    let (ok, text) = m.run(&["weights", "get", "m"]);
    assert!(ok, "{text}");
    assert_eq!(
        *m.server.ranges.lock().unwrap(),
        vec![String::new(), format!("bytes={half}-")]
    );
    assert!(
        std::fs::read(m.dir.join("data/m.safetensors")).unwrap()
            == std::fs::read(fixture("convert", "tf2_weights.safetensors")).unwrap()
    );
}

#[test]
fn weights_by_name_extract_the_same_features_as_the_python_converted_file() {
    if test_gpu().is_none() {
        return;
    }
    let tgz = saved_model_tar_gz();
    let m = OneModel::new(
        "by-name",
        "tiny-delg",
        "tf2-savedmodel-tar-gz",
        tgz.clone(),
        sha256(&tgz),
        None,
    );
    let images = m.dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(fixture("convert_dolg", "image.png"), images.join("a.png")).unwrap();
    // Global descriptors with these weights (None: the default model).
    let extract = |weights: Option<&str>, out: &str| {
        let out = m.dir.join(out);
        let mut args = vec![
            "extract",
            images.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend([
            "--scales",
            "1",
            "--global-scales",
            "0",
            "--score-threshold",
            "0",
            "--quiet",
        ]);
        if let Some(w) = weights {
            args.extend(["--weights", w]);
        }
        let (ok, text) = m.run(&args);
        (ok, text, std::fs::read(out.join("global.npy")).ok())
    };
    let (ok, text, _) = extract(Some("tiny-delg"), "before");
    assert!(
        !ok && text.contains("delg-gpu weights get tiny-delg"),
        "{text}"
    );
    let (ok, text) = m.run(&["weights", "get", "tiny-delg"]);
    assert!(ok, "{text}");
    let python = fixture("convert", "tf2_weights.safetensors");
    let by_path = extract(Some(python.to_str().unwrap()), "by-path")
        .2
        .unwrap();
    assert_eq!(extract(Some("tiny-delg"), "by-name").2.unwrap(), by_path);
    let (ok, text) = m.run(&["weights", "default", "tiny-delg"]);
    assert!(ok, "{text}");
    assert_eq!(extract(None, "by-default").2.unwrap(), by_path);
}

#[test]
fn without_weights_or_a_default_model_one_line_says_how_to_get_one() {
    let torch = std::fs::read(fixture("convert", "torch_source.pth")).unwrap();
    let m = OneModel::new(
        "default",
        "w",
        "torch-delg",
        torch.clone(),
        sha256(&torch),
        None,
    );
    for args in [
        &["extract", "images", "--out", "x"][..],
        &["match", "a.png", "b.png", "--out", "m.png"],
        &["eval", "--gnd", "gnd.json"],
        &["weights", "default"],
    ] {
        let (ok, text) = m.run(args);
        assert!(
            !ok && text.contains("`delg-gpu weights get ")
                && text.contains("`delg-gpu weights default "),
            "{args:?}: {text}"
        );
        assert_eq!(text.trim().lines().count(), 1, "{args:?}: {text}");
    }
    let (ok, text) = m.run(&["weights", "default", "w"]);
    assert!(
        !ok && text.contains("run `delg-gpu weights get w`"),
        "{text}"
    );
    for args in [&["weights", "get", "w"][..], &["weights", "default", "w"]] {
        let (ok, text) = m.run(args);
        assert!(ok, "{text}");
    }
    let (ok, text) = m.run(&["weights", "default"]);
    assert!(ok && text.trim().ends_with("w.safetensors"), "{text}");
}
