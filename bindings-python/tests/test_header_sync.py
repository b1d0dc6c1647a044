"""The ctypes declarations agree with include/pardec.h (names, fields, enum values)."""

from __future__ import annotations

import re
import subprocess
import sys

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


def test_default_search_order_ends_in_the_source_checkout(monkeypatch):
    monkeypatch.delenv("PARDEC_LIB", raising=False)
    monkeypatch.delenv("CARGO_TARGET_DIR", raising=False)
    paths = _lib.candidate_paths()
    assert paths[0].parent == _lib.Path(_lib.__file__).resolve().parent
    assert paths[-1].parts[-3:] == ("target", "release", _lib.LIB_NAME)
