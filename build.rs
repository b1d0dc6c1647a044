//! Compiles src/shim/llama_shim.cpp: the calls into llama.cpp that can throw a C++ exception,
//! each behind a catch (an exception crossing into Rust aborts the process).

fn main() {
    println!("cargo:rerun-if-changed=src/shim/llama_shim.cpp");
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
}
