# Sourced by scripts/setup.sh (and tests/setup/test-find-libclang.sh): `find_libclang` prints the
# libclang that bindgen will load and succeeds, or fails printing nothing.
#
# It follows the search of clang-sys 1.9 (bindgen's loader, build/common.rs and build/dynamic.rs),
# so that set-up never decides "present" for a library bindgen then cannot find:
#   - file names libclang.so, libclang-*.so, libclang.so.*, libclang-*.so.*, but never a name
#     holding "-cpp." (libclang-cpp.so.14 is a different library, and is what Debian's
#     clang-14 runtime installs without libclang-dev);
#   - only 64-bit ELF files on a 64-bit host (clang-sys checks the ELF class);
#   - where LIBCLANG_PATH is set: that file or that folder only;
#   - otherwise `llvm-config --prefix`'s bin, lib and lib64, the folders of LD_LIBRARY_PATH and
#     LIBRARY_PATH, then /usr/local/llvm*/lib*, /usr/local/lib*/*/*, /usr/local/lib*/*,
#     /usr/local/lib*, /usr/lib*/*/*, /usr/lib*/*, /usr/lib*.
# PARDEC_SYSROOT (tests only) is put in front of those system folders.

_libclang_patterns=(libclang.so 'libclang-*.so' 'libclang.so.*' 'libclang-*.so.*')

# ELF class byte (offset 4): 2 = 64-bit, 1 = 32-bit.
_libclang_elf_class_ok() {
    local want=2 class
    [[ $(getconf LONG_BIT 2> /dev/null || echo 64) == 32 ]] && want=1
    class=$(od -An -j4 -N1 -tu1 "$1" 2> /dev/null | tr -d ' ') || return 1
    [[ $(head -c4 "$1" 2> /dev/null | od -An -c | tr -d ' ') == '177ELF' && $class == "$want" ]]
}

# Prints the first usable libclang directly inside folder $1.
_libclang_in_folder() {
    local dir=$1 pattern file name
    [[ -d $dir ]] || return 1
    for pattern in "${_libclang_patterns[@]}"; do
        for file in "$dir"/$pattern; do
            [[ -f $file ]] || continue
            name=${file##*/}
            [[ $name == *-cpp.* ]] && continue
            _libclang_elf_class_ok "$file" || continue
            echo "$file"
            return 0
        done
    done
    return 1
}

find_libclang() {
    local dir prefix root=${PARDEC_SYSROOT:-}
    if [[ -n ${LIBCLANG_PATH:-} ]]; then
        if [[ -f $LIBCLANG_PATH ]]; then
            # A file counts only if it is one of the names searched for.
            local name=${LIBCLANG_PATH##*/} pattern
            for pattern in "${_libclang_patterns[@]}"; do
                # shellcheck disable=SC2053 # a glob match is meant
                [[ $name == $pattern && $name != *-cpp.* ]] && _libclang_elf_class_ok "$LIBCLANG_PATH" \
                    && { echo "$LIBCLANG_PATH"; return 0; }
            done
            return 1
        fi
        _libclang_in_folder "$LIBCLANG_PATH"
        return
    fi
    local folders=()
    if prefix=$(${LLVM_CONFIG_PATH:-llvm-config} --prefix 2> /dev/null); then
        folders+=("$prefix/bin" "$prefix/lib" "$prefix/lib64")
    fi
    local IFS=:
    for dir in ${LD_LIBRARY_PATH:-} ${LIBRARY_PATH:-}; do [[ -n $dir ]] && folders+=("$dir"); done
    unset IFS
    local glob
    for glob in '/usr/local/llvm*/lib*' '/usr/local/lib*/*/*' '/usr/local/lib*/*' '/usr/local/lib*' \
        '/usr/lib*/*/*' '/usr/lib*/*' '/usr/lib*'; do
        # Unquoted on purpose: the pattern expands here, under the test root when there is one.
        for dir in $root$glob; do [[ -d $dir ]] && folders+=("$dir"); done
    done
    for dir in "${folders[@]}"; do
        _libclang_in_folder "$dir" && return 0
    done
    return 1
}
