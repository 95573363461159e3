//! include/delg_gpu.h is what cbindgen makes of src/lib.rs today: a stale
//! header would let C programs compile against functions or fields that
//! are not there.

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))
        .unwrap_or_else(|e| panic!("capi/cbindgen.toml: {e}"));
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen could not read capi/src/lib.rs: {e}"));
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let header = dir.join("include/delg_gpu.h");
    if std::env::var_os("DELG_UPDATE_HEADER").is_some() {
        std::fs::write(&header, &generated).unwrap_or_else(|e| panic!("{}: {e}", header.display()));
    }
    let committed = std::fs::read(&header).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale (or missing): regenerate it with \
         `DELG_UPDATE_HEADER=1 cargo test --release -p delg-gpu-c --test header` and commit it",
        header.display()
    );
}
