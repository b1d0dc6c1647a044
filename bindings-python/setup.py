"""Builds the pardec wheel: the pure-Python package plus libpardec, built by cargo.

setuptools-rust runs cargo on the repository's crate (``../Cargo.toml``) with the ``capi``
feature and copies the cdylib into the package as ``pardec/libpardec.so``: the file name the
loader looks for, not a Python extension-module name, since the library is loaded with ctypes
and has no Python-ABI dependency (``Binding.NoBinding``). The wheel is tagged
``py3-none-<platform>`` for the same reason.

The cargo invocation is the one ``scripts/build-capi.sh`` makes (``cargo rustc --release --lib
--features capi --crate-type cdylib --crate-type staticlib -- -C
link-arg=-Wl,-soname,libpardec.so.<PARDEC_ABI_MAJOR>``), in cargo's default target dir (the
repository's ``target/``, or ``$CARGO_TARGET_DIR``): the two share every compiled artifact, so
a wheel built after the C library (or a second wheel) compiles nothing, and llama.cpp is never
rebuilt because the wheel was asked for. The copy in the package is stripped of debug info.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Tuple

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools_rust import Binding, RustExtension, Strip, build_rust

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HEADER = REPO / "include" / "pardec.h"

if sys.platform == "darwin":
    LIB_NAME = "libpardec.dylib"
elif os.name == "nt":
    LIB_NAME = "pardec.dll"
else:
    LIB_NAME = "libpardec.so"


def abi_major() -> str:
    """``PARDEC_ABI_MAJOR`` from include/pardec.h (the SONAME's number)."""
    found = re.search(r"^#define PARDEC_ABI_MAJOR (\d+)$", HEADER.read_text(), re.M)
    if not found:
        raise SystemExit(f"{HEADER} has no PARDEC_ABI_MAJOR")
    return found.group(1)


def link_args() -> Tuple[str, ...]:
    """The rustc arguments of scripts/build-capi.sh that name the library (SONAME)."""
    abi = abi_major()
    if sys.platform.startswith("linux"):
        return ("-C", f"link-arg=-Wl,-soname,libpardec.so.{abi}")
    if sys.platform == "darwin":
        return ("-C", f"link-arg=-Wl,-install_name,@rpath/libpardec.{abi}.dylib")
    return ()


class BuildRustLibrary(build_rust):  # type: ignore[misc]
    """build_rust that installs the cdylib under its platform name (``libpardec.so``), not
    under a Python extension-module name (``libpardec.cpython-311-x86_64-linux-gnu.so``)."""

    def get_dylib_ext_path(self, ext: RustExtension, target_fname: str) -> str:
        """Where the library goes in the build tree: ``<build_lib>/pardec/<LIB_NAME>``."""
        path: str = super().get_dylib_ext_path(ext, target_fname)
        return os.path.join(os.path.dirname(path), LIB_NAME)


class PlatformWheel(bdist_wheel):  # type: ignore[misc]
    """A platform wheel with no Python-ABI tag: ``py3-none-<platform>``."""

    def get_tag(self) -> Tuple[str, str, str]:
        """The wheel tag: any Python 3, no ABI, this platform."""
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(
    rust_extensions=[
        RustExtension(
            "pardec.libpardec",
            path=str(REPO / "Cargo.toml"),
            binding=Binding.NoBinding,
            features=["capi"],
            # build-capi.sh's crate types and rustc arguments, so both builds share one
            # fingerprint (different ones would recompile the crate every other time).
            args=["--crate-type", "cdylib", "--crate-type", "staticlib"],
            rustc_flags=list(link_args()),
            strip=Strip.Debug,
            py_limited_api=False,
            debug=False,
        )
    ],
    cmdclass={"build_rust": BuildRustLibrary, "bdist_wheel": PlatformWheel},
    zip_safe=False,
)
