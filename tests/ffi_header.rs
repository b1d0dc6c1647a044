//! The checked-in C header is exactly what cbindgen generates from src/ffi/, and its version
//! macros match Cargo.toml.
//!
//! After changing the C API, regenerate it with
//!   PARDEC_BLESS_HEADER=1 cargo test --release --test ffi_header

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn header_path() -> PathBuf {
    root().join("include").join("pardec.h")
}

/// The `#define`s that tie the header to the crate version (cbindgen cannot evaluate
/// `env!`, so they are added here rather than written in Rust).
fn version_macros() -> String {
    format!(
        "\n#define PARDEC_VERSION_MAJOR {}\n#define PARDEC_VERSION_MINOR {}\n#define PARDEC_VERSION_PATCH {}\n#define PARDEC_VERSION \"{}\"\n\
         /* The C ABI's major version: the shared library's SONAME is libpardec.so.<it>. */\n#define PARDEC_ABI_MAJOR {}\n",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION"),
        env!("PARDEC_ABI_MAJOR"),
    )
}

fn generate() -> String {
    let mut config = cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml");
    config.after_includes = Some(version_macros());
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root().join("src").join("ffi").join("mod.rs"))
        .generate()
        .expect("cbindgen failed on src/ffi/");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("cbindgen wrote UTF-8")
}

fn first_difference(a: &str, b: &str) -> String {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {}:\n  checked in: {x}\n  generated:  {y}", i + 1);
        }
    }
    format!("lengths differ ({} vs {} lines)", a.lines().count(), b.lines().count())
}

#[test]
fn checked_in_header_matches_cbindgen_output() {
    let generated = generate();
    let path = header_path();
    if std::env::var_os("PARDEC_BLESS_HEADER").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let checked_in = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (generate it with PARDEC_BLESS_HEADER=1)", path.display()));
    assert!(
        checked_in == generated,
        "include/pardec.h is stale; regenerate it with \
         `PARDEC_BLESS_HEADER=1 cargo test --release --test ffi_header`.\nFirst difference at {}",
        first_difference(&checked_in, &generated)
    );
}

/// `[package] version` read from Cargo.toml itself (not through cargo's environment), so the
/// check also holds when someone edits the header by hand.
fn cargo_toml_version(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && line.starts_with("version") {
            let value = line.split_once('=').unwrap().1.trim();
            return value.trim_matches('"').to_string();
        }
    }
    panic!("no [package] version in {}", path.display());
}

fn header_define(header: &str, name: &str) -> String {
    header
        .lines()
        .find_map(|l| l.strip_prefix("#define ")?.strip_prefix(name)?.strip_prefix(' ').map(str::trim))
        .unwrap_or_else(|| panic!("include/pardec.h has no #define {name}"))
        .to_string()
}

#[test]
fn header_version_macros_match_cargo_toml() {
    let version = cargo_toml_version(&root().join("Cargo.toml"));
    let header = std::fs::read_to_string(header_path()).unwrap();
    let parts: Vec<&str> = version.split(['.', '-', '+']).collect();
    assert_eq!(header_define(&header, "PARDEC_VERSION_MAJOR"), parts[0], "PARDEC_VERSION_MAJOR");
    assert_eq!(header_define(&header, "PARDEC_VERSION_MINOR"), parts[1], "PARDEC_VERSION_MINOR");
    assert_eq!(header_define(&header, "PARDEC_VERSION_PATCH"), parts[2], "PARDEC_VERSION_PATCH");
    assert_eq!(header_define(&header, "PARDEC_VERSION"), format!("\"{version}\""), "PARDEC_VERSION");
    // And the library reports the same version at run time.
    let lib = unsafe { std::ffi::CStr::from_ptr(pardec::ffi::pardec_version()) };
    assert_eq!(lib.to_str().unwrap(), version);
}
