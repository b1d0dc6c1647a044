"""The ctypes declarations agree with include/pardec.h (names, fields, enum values); the
library search and the version check."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

import pardec
from pardec import _lib


def header_structs(header: str) -> dict:
    structs = {}
    for name, body in re.findall(r"typedef struct (\w+) \{(.*?)\} \1;", header, re.S):
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        fields = [m for m in re.findall(r"(\w+)(?:\[\w*\])?;", body)]
        structs[name] = fields
    return structs


def header_enum(header: str, name: str) -> dict:
    body = re.search(r"typedef enum %s \{(.*?)\} %s;" % (name, name), header, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    return {k: int(v) for k, v in re.findall(r"(\w+) = (-?\d+)", body)}


def test_functions_match_header(header):
    code = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    declared = set(re.findall(r"^[\w\s\*]+?\b(pardec_\w+)\(", code, re.M))
    assert declared == set(_lib.FUNCTIONS)
    lib = _lib.lib()
    for name in _lib.FUNCTIONS:
        assert getattr(lib, name).argtypes is not None or name in (
            "pardec_version", "pardec_last_error"), name


def test_structs_match_header(header):
    structs = header_structs(header)
    for name, cls in _lib.STRUCTS.items():
        assert [f for f, _ in cls._fields_] == structs[name], name
    # Every struct in the header is mirrored.
    assert set(structs) == set(_lib.STRUCTS)


def test_status_enum_matches_header(header):
    values = header_enum(header, "pardec_status")
    assert {f"PARDEC_STATUS_{s.name}": int(s) for s in pardec.Status} == values


def test_other_enums_match_header(header):
    assert header_enum(header, "pardec_stop_reason") == {
        f"PARDEC_STOP_REASON_{(v or 'none').upper()}": k for k, v in pardec._STOP_REASONS.items()}
    assert header_enum(header, "pardec_event_kind") == {
        f"PARDEC_EVENT_KIND_{v.upper()}": k for k, v in pardec._EVENT_KINDS.items()}
    assert header_enum(header, "pardec_join_state") == {
        f"PARDEC_JOIN_STATE_{v.upper()}": k for k, v in pardec._JOIN_STATES.items()}
    assert header_enum(header, "pardec_join_mode") == {
        "PARDEC_JOIN_MODE_ALL": pardec._JOIN_ALL, "PARDEC_JOIN_MODE_KEEP": pardec._JOIN_KEEP,
        "PARDEC_JOIN_MODE_DISCARD": pardec._JOIN_DISCARD}
    assert header_enum(header, "pardec_kv_type") == {
        f"PARDEC_KV_TYPE_{k.upper()}": v for k, v in pardec._KV_TYPES.items()}


def test_version_matches_header(header):
    assert f'#define PARDEC_VERSION "{pardec.version()}"' in header


def test_missing_library_names_the_paths_tried(tmp_path):
    missing = tmp_path / "nowhere" / "libpardec.so"
    code = "import pardec\ntry:\n    pardec.version()\nexcept pardec.LibraryNotFoundError as e:\n    print(e)\n"
    out = subprocess.run([sys.executable, "-c", code], env={"PARDEC_LIB": str(missing), "PYTHONPATH": str(_lib.Path(pardec.__file__).parents[1])},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert str(missing) in out.stdout and "PARDEC_LIB" in out.stdout


def _fake_tree(root, files):
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("")


def test_the_source_checkout_fallback_is_only_tried_in_a_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv("PARDEC_LIB", raising=False)
    monkeypatch.setenv("CARGO_TARGET_DIR", str(tmp_path / "cargo-target"))
    # An installed package: only its own folder (no <venv>/lib/python3.X/target/release).
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "pardec"
    assert _lib._candidate_paths_for(site) == [site / _lib.LIB_NAME]
    # A source checkout: then $CARGO_TARGET_DIR/release and <repo>/target/release.
    repo = tmp_path / "repo"
    _fake_tree(repo, ["Cargo.toml", "include/pardec.h", "bindings-python/pyproject.toml"])
    pkg = repo / "bindings-python" / "pardec"
    assert _lib._candidate_paths_for(pkg) == [
        pkg / _lib.LIB_NAME, tmp_path / "cargo-target" / "release" / _lib.LIB_NAME,
        repo / "target" / "release" / _lib.LIB_NAME]
    # A folder merely named bindings-python, without the checkout around it, is no checkout.
    lone = tmp_path / "x" / "bindings-python" / "pardec"
    assert _lib._candidate_paths_for(lone) == [lone / _lib.LIB_NAME]
    # $PARDEC_LIB alone when set.
    monkeypatch.setenv("PARDEC_LIB", str(tmp_path / "mine.so"))
    assert _lib.candidate_paths() == [tmp_path / "mine.so"]


def test_this_package_loads_the_library_it_should(monkeypatch):
    """Installed (scripts/test-python.sh sets PARDEC_TEST_INSTALLED): the bundled library and
    nothing else; in a checkout: the bundled one or target/release."""
    here = _lib.Path(pardec.__file__).resolve().parent
    if os.environ.get("PARDEC_LIB"):
        pytest.skip("PARDEC_LIB overrides the search")
    if os.environ.get("PARDEC_TEST_INSTALLED"):
        assert _lib.candidate_paths() == [here / _lib.LIB_NAME]
        assert pardec.library_path() == str(here / _lib.LIB_NAME)
    else:
        assert pardec.library_path() in {str(p) for p in _lib.candidate_paths()}


def test_version_is_the_libraries_and_the_headers(header):
    assert pardec.__version__ == pardec.version() == _lib.PACKAGE_VERSION
    major, minor, patch = (re.search(rf"#define PARDEC_VERSION_{k} (\d+)", header).group(1)
                           for k in ("MAJOR", "MINOR", "PATCH"))
    assert pardec.__version__ == f"{major}.{minor}.{patch}"


def test_version_check_rules():
    assert _lib.check_version("0.4.0", "0.4.0") is None
    assert _lib.check_version("0.4.7", "0.4.0") is None  # patch releases mix freely
    with pytest.warns(pardec.LibraryVersionWarning, match="newer"):
        assert _lib.check_version("0.5.0", "0.4.0") is None  # the ABI only grows
    for library in ("0.3.9", "1.4.0", "banana"):
        problem = _lib.check_version(library, "0.4.0")
        assert problem is not None and library in problem


def test_a_library_of_another_version_is_refused_at_load(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in library")
    src = tmp_path / "old.c"
    src.write_text('const char *pardec_version(void) { return "0.3.0"; }\n')
    so = tmp_path / "libpardec.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    code = ("import pardec\ntry:\n    pardec.version()\nexcept pardec.LibraryNotFoundError as e:\n"
            "    print('refused:', e)\n")
    pkg = str(_lib.Path(pardec.__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], env={"PARDEC_LIB": str(so), "PYTHONPATH": pkg},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "libpardec 0.3.0" in out.stdout
    assert f"Python package {pardec.__version__}" in out.stdout
