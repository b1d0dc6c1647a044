//! Compiles src/shim/llama_shim.cpp: the calls into llama.cpp that can throw a C++ exception,
//! each behind a catch (an exception crossing into Rust aborts the process).

fn main() {
    println!("cargo:rerun-if-changed=src/shim/llama_shim.cpp");
    require_rpc_backend_if_asked();
    // llama-cpp-sys-2 (links = "llama") installs llama.cpp's headers next to its cmake dir:
    // <out>/lib/cmake → <out>/include.
    let cmake_dir = std::env::var("DEP_LLAMA_GGML_CMAKE_DIR")
        .expect("llama-cpp-sys-2 did not say where it installed llama.cpp (DEP_LLAMA_GGML_CMAKE_DIR)");
    let include = std::path::Path::new(&cmake_dir).join("..").join("..").join("include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include(&include)
        .file("src/shim/llama_shim.cpp")
        .warnings(true)
        .compile("pardec_llama_shim");

    // The C ABI's major version, for the header (tests/ffi_header.rs writes it there); the
    // shared library's SONAME is libpardec.so.<it> (scripts/build-capi.sh reads it back from the
    // header: a build script cannot add link arguments to a crate type built on request).
    println!("cargo:rustc-env=PARDEC_ABI_MAJOR={PARDEC_ABI_MAJOR}");
}

/// The `rpc` feature needs llama.cpp built with its RPC backend, which llama-cpp-sys-2 does when
/// `GGML_RPC=ON` is in the environment of the build (a feature cannot set it for another
/// crate's build script). Stopping here says so, instead of a build that refuses servers later.
fn require_rpc_backend_if_asked() {
    println!("cargo:rerun-if-env-changed=GGML_RPC");
    if std::env::var_os("CARGO_FEATURE_RPC").is_none() {
        return;
    }
    let on =
        std::env::var("GGML_RPC").is_ok_and(|v| matches!(v.to_ascii_uppercase().as_str(), "ON" | "1" | "TRUE" | "YES"));
    if !on {
        panic!(
            "the `rpc` feature needs llama.cpp's RPC backend: build with GGML_RPC=ON in the \
             environment (e.g. `GGML_RPC=ON cargo build --features rpc`, or [env] GGML_RPC = \"ON\" \
             in .cargo/config.toml); switching it on for an existing target directory also needs \
             `cargo clean -p llama-cpp-sys-2`, whose CMake cache keeps the old setting"
        );
    }
}

/// The C ABI's major version: bumped only when a released function or struct changes
/// incompatibly; the ABI grows by appending (struct_size), which minor versions keep.
const PARDEC_ABI_MAJOR: u32 = 0;
