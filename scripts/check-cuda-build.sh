#!/usr/bin/env bash
# Compile-checks `--features cuda` on a machine without a CUDA toolkit or GPU: NVIDIA's PyPI
# wheels give nvcc, cudart, cuBLAS and CCCL for CUDA 13.0; llama.cpp's CUDA backend is compiled
# for one architecture (flash-attention kernels off unless GGML_CUDA_FA=ON) and pardec is
# type-checked against it. About 30 minutes on 2 cores, ~3 GB of wheels cached outside the repo.
# Linking is not checked: the wheels carry no static cuBLAS, which llama-cpp-sys-2 links.
#
#   bash scripts/check-cuda-build.sh
#
# Environment: PARDEC_CUDA_WHEELS (where the wheels go; default ~/.cache/pardec/cuda13),
# CMAKE_CUDA_ARCHITECTURES (90), GGML_CUDA_FA (OFF), PARDEC_CUDA_TARGET (target-cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cmake >/dev/null || { echo "check-cuda-build: cmake is missing: run scripts/setup.sh" >&2; exit 1; }
TK=${PARDEC_CUDA_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/pardec/cuda13}
R=$TK/nvidia/cu13
if [ ! -x "$R/bin/nvcc" ]; then
  echo "check-cuda-build: installing CUDA 13.0 wheels into $TK"
  python3 -m pip install --quiet --target "$TK" "cuda-toolkit[nvcc,cudart,cublas,cccl,crt,nvvm]==13.0.*"
fi
# CMake's FindCUDAToolkit looks for unversioned library names, lib64/, and the driver stub.
for l in cudart cublas cublasLt nvrtc; do ln -sf "lib$l.so.13" "$R/lib/lib$l.so"; done
ln -sfn lib "$R/lib64"
mkdir -p "$R/lib/stubs"
if [ ! -f "$R/lib/stubs/libcuda.so" ]; then
  echo 'void cuGetErrorString(void) {}' >"$R/lib/stubs/stub.c"
  gcc -shared -o "$R/lib/stubs/libcuda.so" "$R/lib/stubs/stub.c"
fi
"$R/bin/nvcc" --version | tail -2
export PATH=$R/bin:$PATH CUDA_PATH=$R CUDAToolkit_ROOT=$R CMAKE_CUDA_COMPILER=$R/bin/nvcc
export CMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES:-90} GGML_CUDA_FA=${GGML_CUDA_FA:-OFF}
CARGO_TARGET_DIR=${PARDEC_CUDA_TARGET:-target-cuda} cargo check --release --features cuda --lib
echo "check-cuda-build: ok (llama.cpp's CUDA backend compiled for sm_$CMAKE_CUDA_ARCHITECTURES; pardec type-checked)"
