#!/usr/bin/env bash
# Installs pardec for C and C++ users (Linux):
#   <prefix>/include/pardec.h
#   <prefix>/<libdir>/libpardec.so.<version>, libpardec.so.<ABI major> (the SONAME), libpardec.so
#   <prefix>/<libdir>/libpardec.a          one object; only the pardec_* functions are global
#   <prefix>/<libdir>/pkgconfig/pardec.pc
#   <prefix>/<libdir>/cmake/pardec/pardecConfig.cmake, pardecConfigVersion.cmake
#                                         (targets pardec::pardec and pardec::pardec_static)
#
#   scripts/install-c.sh [--prefix /usr/local] [--libdir lib] [--destdir STAGING] [--no-build]
#                        [--keep-debug] [-- extra cargo arguments, e.g. --features cuda]
#
# It follows cargo-c's layout (SONAME from the ABI version, .pc, include/ and lib/) without
# needing cargo-c installed (a cargo build of cargo itself, ~10 min here). The static library
# is what scripts/build-capi.sh builds, linked into one relocatable object from the public
# functions down (only what they use), with every other global symbol made local: llama.cpp's
# llama_*/ggml_*, Rust's std and the C++ shim are then private to libpardec.a, so an app with
# its own llama.cpp (or another Rust static library) links without clashes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

prefix=/usr/local libdir=lib destdir="" build=1 keep_debug=0 cargo_args=()
while (($#)); do
    case $1 in
        --prefix) prefix=$2; shift 2 ;;
        --libdir) libdir=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --keep-debug) keep_debug=1; shift ;;
        --) shift; cargo_args=("$@"); break ;;
        -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-c: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ $prefix == /* ]] || { echo "install-c: --prefix must be an absolute path (got '$prefix')" >&2; exit 2; }
[[ $(uname -s) == Linux ]] || { echo "install-c: Linux only for now (the static library step uses GNU ld/objcopy)" >&2; exit 2; }
for tool in ld objcopy readelf; do
    command -v $tool > /dev/null || { echo "install-c: $tool is missing (Debian: apt-get install binutils)" >&2; exit 1; }
done

source scripts/lib/target-dir.sh
release="$(cargo_target_dir)/release"
if ((build)); then bash scripts/build-capi.sh "${cargo_args[@]}"; fi
for f in libpardec.so libpardec.a; do
    [[ -f $release/$f ]] || { echo "install-c: $release/$f is missing: run scripts/build-capi.sh" >&2; exit 1; }
done

version=$(sed -n 's/^#define PARDEC_VERSION "\(.*\)"$/\1/p' include/pardec.h)
abi=$(sed -n 's/^#define PARDEC_ABI_MAJOR \([0-9][0-9]*\)$/\1/p' include/pardec.h)
[[ -n $version && -n $abi ]] || { echo "install-c: include/pardec.h lacks PARDEC_VERSION or PARDEC_ABI_MAJOR" >&2; exit 1; }

# The public functions: those the header declares; the shared library must export exactly them.
public=$(grep -oE '^[A-Za-z].*\bpardec_[a-z0-9_]+\(' include/pardec.h | grep -oE 'pardec_[a-z0-9_]+\($' | tr -d '(' | sort -u)
exported=$(readelf --dyn-syms --wide "$release/libpardec.so" | awk '$5 == "GLOBAL" && $7 != "UND" {print $8}' | sed 's/@.*//' | sort -u)
if [[ $public != "$exported" ]]; then
    echo "install-c: libpardec.so does not export exactly the header's functions:" >&2
    diff <(echo "$public") <(echo "$exported") >&2 || true
    exit 1
fi
soname=$(readelf -d "$release/libpardec.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
[[ $soname == "libpardec.so.$abi" ]] || { echo "install-c: libpardec.so has SONAME '$soname', not libpardec.so.$abi (build it with scripts/build-capi.sh)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
strip_args=(--strip-debug)
((keep_debug)) && strip_args=()

# Static library: one relocatable object holding what the public functions reach.
objcopy "${strip_args[@]}" "$release/libpardec.a" "$work/in.a"
undef=()
for s in $public; do undef+=(-u "$s"); done
ld -r "${undef[@]}" "$work/in.a" -o "$work/pardec_all.o"
echo "$public" > "$work/public.txt"
objcopy --keep-global-symbols="$work/public.txt" "$work/pardec_all.o" "$work/pardec.o"
leaked=$(readelf -s --wide "$work/pardec.o" | awk '$5 == "GLOBAL" && $7 != "UND" {print $8}' | sort -u | grep -v -x -F -f "$work/public.txt" || true)
[[ -z $leaked ]] || { echo "install-c: symbols still global in the static library: $leaked" >&2; exit 1; }
# gcc-ar names GCC's own LTO plugin, so binutils does not load every plugin it finds (LLVM's,
# installed with libclang-dev, fails on this object).
ar=ar
command -v gcc-ar > /dev/null && ar=gcc-ar
rm -f "$work/libpardec.a"
$ar rcs "$work/libpardec.a" "$work/pardec.o"

inc="$destdir$prefix/include" lib="$destdir$prefix/$libdir"
mkdir -p "$inc" "$lib/pkgconfig" "$lib/cmake/pardec"
install -m 644 include/pardec.h "$inc/pardec.h"
install -m 755 "$release/libpardec.so" "$lib/libpardec.so.$version"
((keep_debug)) || objcopy --strip-debug "$lib/libpardec.so.$version"
ln -sf "libpardec.so.$version" "$lib/libpardec.so.$abi"
ln -sf "libpardec.so.$abi" "$lib/libpardec.so"
install -m 644 "$work/libpardec.a" "$lib/libpardec.a"

# What a static link needs besides libpardec.a: llama.cpp is C++ with OpenMP (GCC's libgomp).
private_libs="-lstdc++ -lgomp -lm -lpthread -ldl"
sed -e "s|@prefix@|$prefix|" -e "s|@libdir@|$libdir|" -e "s|@version@|$version|" \
    -e "s|@private_libs@|$private_libs|" capi/pardec.pc.in > "$lib/pkgconfig/pardec.pc"
# From <prefix>/<libdir>/cmake/pardec back to <prefix>: one ".." per folder.
up=$(echo "$libdir/cmake/pardec" | tr -s / | sed -e 's|[^/][^/]*|..|g' -e 's|/$||')
sed -e "s|@libdir@|$libdir|" -e "s|@version@|$version|" -e "s|@abi@|$abi|" -e "s|@up@|$up|" \
    capi/pardecConfig.cmake.in > "$lib/cmake/pardec/pardecConfig.cmake"
sed -e "s|@version@|$version|" -e "s|@abi@|$abi|" \
    capi/pardecConfigVersion.cmake.in > "$lib/cmake/pardec/pardecConfigVersion.cmake"
echo "install-c: pardec $version (ABI $abi) installed under $destdir$prefix"
