"""ctypes declarations of include/pardec.h, and finding libpardec.

Every struct mirrors the header field by field; every function has its argtypes and restype
declared, with the C prototype in a comment above it. A struct that drifted from the header is
caught at run time: the library refuses sizes it does not know (PARDEC_STATUS_STRUCT_SIZE), and
tests/test_header_sync.py compares these declarations with the header.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
import warnings
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int32,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type

# ----- finding the library -----------------------------------------------------------------

if sys.platform == "darwin":
    LIB_NAME = "libpardec.dylib"
elif os.name == "nt":
    LIB_NAME = "pardec.dll"
else:
    LIB_NAME = "libpardec.so"

#: The package's version: the library's must have the same major.minor (see :func:`lib`).
PACKAGE_VERSION = "0.6.0"


class LibraryNotFoundError(OSError):
    """libpardec could not be loaded; the message lists every path tried and why it failed."""


class LibraryVersionWarning(RuntimeWarning):
    """The loaded libpardec is a newer minor version than this package: it works (the C ABI
    only grows within a major version), but the package cannot use what is new."""


def _source_checkout(package_dir: Path) -> Optional[Path]:
    """The repository root when ``package_dir`` is ``<repo>/bindings-python/pardec`` of a
    source checkout (the repo holds Cargo.toml and include/pardec.h), else None: an installed
    package has no cargo target dir next to it."""
    bindings = package_dir.parent
    repo = bindings.parent
    if (bindings.name == "bindings-python" and (bindings / "pyproject.toml").is_file()
            and (repo / "Cargo.toml").is_file() and (repo / "include" / "pardec.h").is_file()):
        return repo
    return None


def _candidate_paths_for(package_dir: Path) -> List[Path]:
    """:func:`candidate_paths` for a package in ``package_dir``, ignoring ``$PARDEC_LIB``."""
    paths = [package_dir / LIB_NAME]
    repo = _source_checkout(package_dir)
    if repo is not None:
        target_dir = os.environ.get("CARGO_TARGET_DIR")
        if target_dir:
            paths.append(Path(target_dir) / "release" / LIB_NAME)
        paths.append(repo / "target" / "release" / LIB_NAME)
    return paths


def candidate_paths() -> List[Path]:
    """Where libpardec is looked for, in order.

    1. ``$PARDEC_LIB`` (a file), if set: then nothing else is tried;
    2. next to this package (the wheel bundles the library there);
    3. only when this package is the ``bindings-python/pardec`` folder of a source checkout:
       ``$CARGO_TARGET_DIR/release``, then ``<repo>/target/release``.
    """
    override = os.environ.get("PARDEC_LIB")
    if override:
        return [Path(override)]
    return _candidate_paths_for(Path(__file__).resolve().parent)


def _major_minor(version: str) -> Tuple[int, int]:
    """(major, minor) of a version string such as "0.4.0"; ValueError if it has none."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if not found:
        raise ValueError(f"not a version: {version!r}")
    return int(found.group(1)), int(found.group(2))


def check_version(library: str, package: str = PACKAGE_VERSION) -> Optional[str]:
    """Whether a library of version ``library`` can serve this package: None if so (a newer
    minor version also warns with :class:`LibraryVersionWarning`), else why not. The C ABI only
    grows within a major version, so an older minor version lacks functions the package
    declares, and another major version may have changed anything."""
    try:
        lib_v, pkg_v = _major_minor(library), _major_minor(package)
    except ValueError:
        return f"pardec_version() returned {library!r}, not a version"
    if lib_v == pkg_v:
        return None
    if lib_v[0] == pkg_v[0] and lib_v[1] > pkg_v[1]:
        warnings.warn(
            f"libpardec {library} is newer than the pardec Python package {package}: it works, "
            "but what it added is not reachable from Python; install the package of the same "
            "version", LibraryVersionWarning, stacklevel=4)
        return None
    return (f"libpardec {library} does not match the pardec Python package {package} "
            "(major.minor must be equal, or the library's minor newer)")


_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[Path] = None
_lib_lock = threading.Lock()


def lib() -> ctypes.CDLL:
    """The loaded library with its prototypes declared (loaded on first use). A library whose
    ``pardec_version()`` does not match the package's major.minor is refused (the search goes
    on, and the error lists it)."""
    global _lib, _lib_path
    loaded_lib = _lib
    if loaded_lib is not None:
        return loaded_lib
    with _lib_lock:
        if _lib is None:
            tried = []
            for path in candidate_paths():
                if not path.is_file():
                    tried.append(f"{path}: no such file")
                    continue
                try:
                    loaded = ctypes.CDLL(str(path))
                    version_fn = loaded.pardec_version
                except (OSError, AttributeError) as e:
                    tried.append(f"{path}: {e}")
                    continue
                version_fn.restype = c_char_p
                version_fn.argtypes = []
                raw: Optional[bytes] = version_fn()
                problem = check_version((raw or b"").decode("utf-8", "replace"))
                if problem is not None:
                    tried.append(f"{path}: {problem}")
                    continue
                _declare(loaded)
                _lib, _lib_path = loaded, path
                break
            else:
                raise LibraryNotFoundError(
                    "libpardec not found; tried:\n  "
                    + "\n  ".join(tried)
                    + "\nInstall the package with `pip install ./bindings-python` (it builds and "
                    "bundles the library), build it with `bash scripts/build-capi.sh` in a source "
                    "checkout, or set PARDEC_LIB to its path."
                )
        assert _lib is not None
        return _lib


def loaded_path() -> Optional[Path]:
    """The path the library was loaded from, or None before it is loaded."""
    return _lib_path


# ----- types -------------------------------------------------------------------------------

pardec_status = c_int  # enum pardec_status
pardec_node = c_uint32


class pardec_model_params(Structure):
    """``struct pardec_model_params`` of include/pardec.h."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("n_gpu_layers", c_int32),
        ("rpc_servers", c_char_p),
    ]


class pardec_chat_message(Structure):
    """``struct pardec_chat_message`` of include/pardec.h."""

    _fields_ = [
        ("role", c_char_p),
        ("content", c_char_p),
    ]


class pardec_sampling_params(Structure):
    """``struct pardec_sampling_params`` of include/pardec.h."""

    _fields_ = [
        ("temperature", c_float),
        ("top_k", c_uint32),
        ("top_p", c_float),
        ("min_p", c_float),
        ("seed", c_uint64),
    ]


class pardec_logit_bias(Structure):
    """``struct pardec_logit_bias`` of include/pardec.h."""

    _fields_ = [
        ("token", c_int32),
        ("bias", c_float),
    ]


class pardec_session_params(Structure):
    """``struct pardec_session_params`` of include/pardec.h."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("n_ctx", c_uint32),
        ("n_batch", c_uint32),
        ("max_branches", c_uint32),
        ("max_depth", c_uint32),
        ("n_threads", c_uint32),
        ("kv_type", c_uint32),
        ("flash_attn", c_int32),
        ("sampling", pardec_sampling_params),
        ("device_candidates", c_uint32),
        ("repeat_penalty", c_float),
        ("frequency_penalty", c_float),
        ("presence_penalty", c_float),
        ("penalty_last_n", c_int32),
        ("logit_bias", POINTER(pardec_logit_bias)),
        ("n_logit_bias", c_size_t),
        ("logprobs", c_int32),
    ]


class pardec_run_limits(Structure):
    """``struct pardec_run_limits`` of include/pardec.h."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("max_tokens", c_uint32),
        ("stop", POINTER(c_char_p)),
        ("n_stop", c_size_t),
        ("ban_eog", c_bool),
        ("banned_tokens", POINTER(c_int32)),
        ("n_banned_tokens", c_size_t),
        ("strip_stop", c_bool),
        ("grammar", c_char_p),
        ("grammar_root", c_char_p),
    ]


class pardec_block_info(Structure):
    """``struct pardec_block_info`` of include/pardec.h."""

    _fields_ = [
        ("parent_label", c_char_p),
        ("n_branches", c_size_t),
        ("fork_pos", c_int32),
        ("join_state", c_int),  # enum pardec_join_state
    ]


class pardec_branch_info(Structure):
    """``struct pardec_branch_info`` of include/pardec.h."""

    _fields_ = [
        ("label", c_char_p),
        ("text", c_char_p),
        ("n_tokens", c_size_t),
        ("stop_reason", c_int),  # enum pardec_stop_reason
        ("stop_string", c_char_p),
        ("kept", c_bool),
        ("node", pardec_node),
    ]


class pardec_top_logprob(Structure):
    """``struct pardec_top_logprob`` of include/pardec.h."""

    _fields_ = [("token", c_int32), ("logprob", c_float)]


class pardec_token_logprob(Structure):
    """``struct pardec_token_logprob`` of include/pardec.h."""

    _fields_ = [
        ("pos", c_int32),
        ("token", c_int32),
        ("logprob", c_float),
        ("top", POINTER(pardec_top_logprob)),
        ("n_top", c_size_t),
    ]


class pardec_special_tokens(Structure):
    """``struct pardec_special_tokens`` of include/pardec.h."""

    _fields_ = [(name, c_int32) for name in ("bos", "eos", "eot", "sep", "nl", "pad")]


class pardec_stats(Structure):
    """``struct pardec_stats`` of include/pardec.h."""

    _fields_ = [
        ("tokens_total", c_uint64),
        ("tokens_branch", c_uint64),
        ("tokens_prefill", c_uint64),
        ("steps", c_uint64),
        ("blocks", c_uint64),
        ("branches", c_uint64),
        ("serial_seconds", c_double),
        ("parallel_seconds", c_double),
        ("prefill_seconds", c_double),
        ("tps", c_double),
        ("p_tps", c_double),
        ("dp", c_double),
        ("abn", c_double),
        ("parallel", c_double),
        ("kv_cells_used", c_uint64),
        ("kv_cells_unshared", c_uint64),
        ("host_us_per_step", c_double),
        ("selection_us_per_step", c_double),
    ]


class pardec_event(Structure):
    """``struct pardec_event`` of include/pardec.h."""

    # `label`, `text` and `stop_string` are c_void_p, not c_char_p: text is read with its
    # length (string_at), and all three are valid only during the callback.
    _fields_ = [
        ("struct_size", c_size_t),
        ("kind", c_int),  # enum pardec_event_kind
        ("node", pardec_node),
        ("label", c_void_p),
        ("text", c_void_p),
        ("text_len", c_size_t),
        ("token", c_int32),
        ("stop_reason", c_int),  # enum pardec_stop_reason
        ("stop_string", c_void_p),
        ("status", c_int),  # enum pardec_status
        ("has_logprob", c_bool),
        ("logprob", c_float),
        ("top", POINTER(pardec_top_logprob)),
        ("n_top", c_size_t),
    ]


# typedef bool (*pardec_callback)(void *user_data, const struct pardec_event *event);
pardec_callback = CFUNCTYPE(c_bool, c_void_p, POINTER(pardec_event))

# typedef bool (*pardec_request_callback)(void *user_data, uint64_t request,
#                                         const struct pardec_event *event);
pardec_request_callback = CFUNCTYPE(c_bool, c_void_p, c_uint64, POINTER(pardec_event))


class pardec_conversations_params(Structure):
    """``struct pardec_conversations_params`` of include/pardec.h."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("max_active", c_uint32),
        ("branches_per_request", c_uint32),
        ("cached_prompts", c_uint32),
    ]


class pardec_request_params(Structure):
    """``struct pardec_request_params`` of include/pardec.h."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("sampling", pardec_sampling_params),
        ("protocol", c_char_p),
        ("max_tokens", c_uint32),
        ("max_branch_tokens", c_uint32),
        ("stop", POINTER(c_char_p)),
        ("n_stop", c_size_t),
        ("strip_stop", c_bool),
        ("ban_eog", c_bool),
        ("logprobs", c_int32),
    ]


class pardec_outcome_info(Structure):
    """``struct pardec_outcome_info`` of include/pardec.h."""

    _fields_ = [
        ("request", c_uint64),
        ("status", c_int),  # enum pardec_status
        ("stop_reason", c_int),  # enum pardec_stop_reason
        ("prompt_tokens", c_uint64),
        ("reused_tokens", c_uint64),
        ("generated_tokens", c_uint64),
        ("steps", c_uint64),
        ("blocks", c_uint64),
        ("queued_seconds", c_double),
        ("decoding_seconds", c_double),
    ]


model_p = c_void_p  # struct pardec_model *
session_p = c_void_p  # struct pardec_session *
result_p = c_void_p  # struct pardec_result *
adapter_p = c_void_p  # struct pardec_adapter *
conversations_p = c_void_p  # struct pardec_conversations *


def _declare(L: ctypes.CDLL) -> None:
    """Declares every function of the header on the loaded library."""

    def fn(name: str, restype: Any, *argtypes: Any) -> None:
        f = getattr(L, name)
        f.restype = restype
        f.argtypes = list(argtypes)

    # Strings returned as `char *` must reach pardec_string_free, so they are c_void_p here
    # (c_char_p would convert them to bytes and lose the pointer).
    char_pp = POINTER(c_void_p)

    # const char *pardec_version(void);
    fn("pardec_version", c_char_p)
    # const char *pardec_status_str(int32_t status);
    fn("pardec_status_str", c_char_p, c_int32)
    # const char *pardec_last_error(void);
    fn("pardec_last_error", c_char_p)
    # void pardec_string_free(char *s);
    fn("pardec_string_free", None, c_void_p)

    # enum pardec_status pardec_model_params_default(struct pardec_model_params *out, size_t struct_size);
    fn("pardec_model_params_default", pardec_status, POINTER(pardec_model_params), c_size_t)
    # enum pardec_status pardec_session_params_default(struct pardec_session_params *out, size_t struct_size);
    fn("pardec_session_params_default", pardec_status, POINTER(pardec_session_params), c_size_t)
    # enum pardec_status pardec_run_limits_default(struct pardec_run_limits *out, size_t struct_size);
    fn("pardec_run_limits_default", pardec_status, POINTER(pardec_run_limits), c_size_t)

    # enum pardec_status pardec_model_load(const char *path, const struct pardec_model_params *params,
    #                                      struct pardec_model **out_model);
    fn("pardec_model_load", pardec_status, c_char_p, POINTER(pardec_model_params), POINTER(model_p))
    # void pardec_model_free(struct pardec_model *model);
    fn("pardec_model_free", None, model_p)
    # enum pardec_status pardec_model_n_vocab(const struct pardec_model *model, size_t *out_n_vocab);
    fn("pardec_model_n_vocab", pardec_status, model_p, POINTER(c_size_t))
    # enum pardec_status pardec_model_architecture(const struct pardec_model *model, char **out_text);
    fn("pardec_model_architecture", pardec_status, model_p, char_pp)
    # enum pardec_status pardec_model_apply_chat_template(const struct pardec_model *model,
    #     const struct pardec_chat_message *messages, size_t n_messages, char **out_text);
    fn("pardec_model_apply_chat_template", pardec_status, model_p, POINTER(pardec_chat_message), c_size_t, char_pp)

    # enum pardec_status pardec_adapter_load(const struct pardec_model *model, const char *path,
    #                                        struct pardec_adapter **out_adapter);
    fn("pardec_adapter_load", pardec_status, model_p, c_char_p, POINTER(adapter_p))
    # void pardec_adapter_free(struct pardec_adapter *adapter);
    fn("pardec_adapter_free", None, adapter_p)
    # enum pardec_status pardec_session_set_adapters(struct pardec_session *session,
    #     const struct pardec_adapter *const *adapters, const float *scales, size_t n);
    fn("pardec_session_set_adapters", pardec_status, session_p, POINTER(adapter_p), POINTER(c_float), c_size_t)

    # enum pardec_status pardec_session_new(const struct pardec_model *model,
    #     const struct pardec_session_params *params, struct pardec_session **out_session);
    fn("pardec_session_new", pardec_status, model_p, POINTER(pardec_session_params), POINTER(session_p))
    # void pardec_session_free(struct pardec_session *session);
    fn("pardec_session_free", None, session_p)
    # enum pardec_status pardec_session_clear(struct pardec_session *session);
    fn("pardec_session_clear", pardec_status, session_p)
    # enum pardec_status pardec_session_reset_stats(struct pardec_session *session);
    fn("pardec_session_reset_stats", pardec_status, session_p)
    # enum pardec_status pardec_session_prompt(struct pardec_session *session, const char *text);
    fn("pardec_session_prompt", pardec_status, session_p, c_char_p)
    # enum pardec_status pardec_session_append(struct pardec_session *session, pardec_node node,
    #                                          const char *text);
    fn("pardec_session_append", pardec_status, session_p, pardec_node, c_char_p)
    # enum pardec_status pardec_session_score(struct pardec_session *session, pardec_node node,
    #     const char *text, float *out_logprobs, size_t capacity, size_t *out_n);
    fn("pardec_session_score", pardec_status, session_p, pardec_node, c_char_p, POINTER(c_float), c_size_t,
       POINTER(c_size_t))
    # enum pardec_status pardec_session_generate(struct pardec_session *session,
    #     const struct pardec_run_limits *limits, pardec_callback callback, void *user_data,
    #     char **out_text);
    fn("pardec_session_generate", pardec_status, session_p, POINTER(pardec_run_limits), pardec_callback, c_void_p, char_pp)
    # enum pardec_status pardec_session_generate_auto(struct pardec_session *session,
    #     const char *protocol, size_t max_tokens, size_t max_branch_tokens,
    #     const char *response_prefix, pardec_callback callback, void *user_data,
    #     char **out_report_json);
    fn("pardec_session_generate_auto", pardec_status, session_p, c_char_p, c_size_t, c_size_t, c_char_p,
       pardec_callback, c_void_p, char_pp)
    # enum pardec_status pardec_session_generate_sot(struct pardec_session *session,
    #     const char *question, size_t skeleton_tokens, size_t point_tokens,
    #     pardec_callback callback, void *user_data, char **out_answer_json);
    fn("pardec_session_generate_sot", pardec_status, session_p, c_char_p, c_size_t, c_size_t,
       pardec_callback, c_void_p, char_pp)
    # enum pardec_status pardec_session_fork(struct pardec_session *session, pardec_node parent,
    #     const char *const *prefixes, size_t n_branches, const struct pardec_run_limits *limits,
    #     pardec_node *out_nodes);
    fn("pardec_session_fork", pardec_status, session_p, pardec_node, POINTER(c_char_p), c_size_t,
       POINTER(pardec_run_limits), POINTER(pardec_node))
    # enum pardec_status pardec_session_run(struct pardec_session *session, pardec_callback callback,
    #                                       void *user_data);
    fn("pardec_session_run", pardec_status, session_p, pardec_callback, c_void_p)
    # enum pardec_status pardec_session_resume(struct pardec_session *session, pardec_node node,
    #                                          const struct pardec_run_limits *limits);
    fn("pardec_session_resume", pardec_status, session_p, pardec_node, POINTER(pardec_run_limits))
    # enum pardec_status pardec_session_step(struct pardec_session *session, pardec_callback callback,
    #                                        void *user_data, bool *out_running);
    fn("pardec_session_step", pardec_status, session_p, pardec_callback, c_void_p, POINTER(c_bool))
    # enum pardec_status pardec_session_join(struct pardec_session *session, pardec_node parent,
    #     uint32_t mode, const size_t *keep, size_t n_keep, const char *join_text);
    fn("pardec_session_join", pardec_status, session_p, pardec_node, c_uint32, POINTER(c_size_t), c_size_t, c_char_p)
    # enum pardec_status pardec_session_join_rule(struct pardec_session *session, pardec_node parent,
    #     uint32_t mode, const size_t *keep, size_t n_keep, uint32_t rule, const char *join_text);
    fn("pardec_session_join_rule", pardec_status, session_p, pardec_node, c_uint32, POINTER(c_size_t), c_size_t,
       c_uint32, c_char_p)
    # enum pardec_status pardec_session_result(const struct pardec_session *session,
    #                                          struct pardec_result **out_result);
    fn("pardec_session_result", pardec_status, session_p, POINTER(result_p))
    # enum pardec_status pardec_session_stats(const struct pardec_session *session,
    #                                         struct pardec_stats *out_stats, size_t size);
    fn("pardec_session_stats", pardec_status, session_p, POINTER(pardec_stats), c_size_t)

    # void pardec_result_free(struct pardec_result *result);
    fn("pardec_result_free", None, result_p)
    # enum pardec_status pardec_result_text(const struct pardec_result *result, const char **out_text);
    fn("pardec_result_text", pardec_status, result_p, POINTER(c_char_p))
    # enum pardec_status pardec_result_n_blocks(const struct pardec_result *result, size_t *out_n_blocks);
    fn("pardec_result_n_blocks", pardec_status, result_p, POINTER(c_size_t))
    # enum pardec_status pardec_result_block(const struct pardec_result *result, size_t block,
    #                                        struct pardec_block_info *out_info, size_t size);
    fn("pardec_result_block", pardec_status, result_p, c_size_t, POINTER(pardec_block_info), c_size_t)
    # enum pardec_status pardec_result_branch(const struct pardec_result *result, size_t block,
    #     size_t index, struct pardec_branch_info *out_info, size_t size);
    fn("pardec_result_branch", pardec_status, result_p, c_size_t, c_size_t, POINTER(pardec_branch_info), c_size_t)
    # enum pardec_status pardec_result_stats(const struct pardec_result *result,
    #                                        struct pardec_stats *out_stats, size_t size);
    fn("pardec_result_stats", pardec_status, result_p, POINTER(pardec_stats), c_size_t)
    # enum pardec_status pardec_result_logprobs(const struct pardec_result *result, pardec_node node,
    #     const struct pardec_token_logprob **out_entries, size_t *out_n);
    fn("pardec_result_logprobs", pardec_status, result_p, pardec_node, POINTER(POINTER(pardec_token_logprob)),
       POINTER(c_size_t))
    # enum pardec_status pardec_model_tokenize(const struct pardec_model *model, const char *text,
    #     bool add_bos, bool parse_special, int32_t *out_tokens, size_t capacity, size_t *out_n);
    fn("pardec_model_tokenize", pardec_status, model_p, c_char_p, c_bool, c_bool, POINTER(c_int32), c_size_t,
       POINTER(c_size_t))
    # enum pardec_status pardec_model_token_piece(const struct pardec_model *model, int32_t token,
    #     char *out_bytes, size_t capacity, size_t *out_len);
    fn("pardec_model_token_piece", pardec_status, model_p, c_int32, c_void_p, c_size_t, POINTER(c_size_t))
    # enum pardec_status pardec_model_detokenize(const struct pardec_model *model, const int32_t *tokens,
    #     size_t n_tokens, char **out_text);
    fn("pardec_model_detokenize", pardec_status, model_p, POINTER(c_int32), c_size_t, char_pp)
    # enum pardec_status pardec_model_special_tokens(const struct pardec_model *model,
    #     struct pardec_special_tokens *out_tokens, size_t size);
    fn("pardec_model_special_tokens", pardec_status, model_p, POINTER(pardec_special_tokens), c_size_t)
    # enum pardec_status pardec_model_token_is_eog(const struct pardec_model *model, int32_t token,
    #     bool *out_is_eog);
    fn("pardec_model_token_is_eog", pardec_status, model_p, c_int32, POINTER(c_bool))
    # enum pardec_status pardec_session_generate_auto_stop(struct pardec_session *session,
    #     const char *protocol, size_t max_tokens, size_t max_branch_tokens, const char *response_prefix,
    #     const char *const *stop, size_t n_stop, pardec_callback callback, void *user_data,
    #     char **out_report_json);
    fn("pardec_session_generate_auto_stop", pardec_status, session_p, c_char_p, c_size_t, c_size_t, c_char_p,
       POINTER(c_char_p), c_size_t, pardec_callback, c_void_p, char_pp)
    # enum pardec_status pardec_conversations_params_default(struct pardec_conversations_params *out,
    #                                                        size_t struct_size);
    fn("pardec_conversations_params_default", pardec_status, POINTER(pardec_conversations_params), c_size_t)
    # enum pardec_status pardec_request_params_default(struct pardec_request_params *out, size_t struct_size);
    fn("pardec_request_params_default", pardec_status, POINTER(pardec_request_params), c_size_t)
    # enum pardec_status pardec_conversations_new(const struct pardec_model *model,
    #     const struct pardec_session_params *session_params,
    #     const struct pardec_conversations_params *params, struct pardec_conversations **out);
    fn("pardec_conversations_new", pardec_status, model_p, POINTER(pardec_session_params),
       POINTER(pardec_conversations_params), POINTER(conversations_p))
    # void pardec_conversations_free(struct pardec_conversations *conversations);
    fn("pardec_conversations_free", None, conversations_p)
    # enum pardec_status pardec_conversations_submit(struct pardec_conversations *conversations,
    #     const char *prompt, const struct pardec_request_params *params, uint64_t *out_request);
    fn("pardec_conversations_submit", pardec_status, conversations_p, c_char_p, POINTER(pardec_request_params),
       POINTER(c_uint64))
    # enum pardec_status pardec_conversations_cancel(struct pardec_conversations *conversations,
    #     uint64_t request, bool *out_found);
    fn("pardec_conversations_cancel", pardec_status, conversations_p, c_uint64, POINTER(c_bool))
    # enum pardec_status pardec_conversations_step(struct pardec_conversations *conversations,
    #     pardec_request_callback callback, void *user_data, bool *out_busy);
    fn("pardec_conversations_step", pardec_status, conversations_p, pardec_request_callback, c_void_p,
       POINTER(c_bool))
    # enum pardec_status pardec_conversations_next_outcome(struct pardec_conversations *conversations,
    #     bool *out_found, struct pardec_outcome_info *out_info, size_t info_size, char **out_text,
    #     char **out_report_json);
    fn("pardec_conversations_next_outcome", pardec_status, conversations_p, POINTER(c_bool),
       POINTER(pardec_outcome_info), c_size_t, char_pp, char_pp)
    # const char *pardec_grammar_json_object(void);
    fn("pardec_grammar_json_object", c_char_p)
    # enum pardec_status pardec_grammar_from_json_schema(const char *schema, char **out_gbnf);
    fn("pardec_grammar_from_json_schema", pardec_status, c_char_p, char_pp)


#: Every function the header declares (tests check the two lists agree).
FUNCTIONS: List[str] = [
    "pardec_version", "pardec_status_str", "pardec_last_error", "pardec_string_free",
    "pardec_model_params_default", "pardec_session_params_default", "pardec_run_limits_default",
    "pardec_model_load", "pardec_model_free", "pardec_model_n_vocab", "pardec_model_architecture",
    "pardec_model_apply_chat_template",
    "pardec_adapter_load", "pardec_adapter_free", "pardec_session_set_adapters", "pardec_session_score",
    "pardec_session_new", "pardec_session_free", "pardec_session_clear", "pardec_session_reset_stats",
    "pardec_session_prompt", "pardec_session_append", "pardec_session_generate", "pardec_session_generate_auto",
    "pardec_session_generate_sot", "pardec_session_fork",
    "pardec_session_run", "pardec_session_resume", "pardec_session_step", "pardec_session_join",
    "pardec_session_join_rule",
    "pardec_session_result", "pardec_session_stats",
    "pardec_result_free", "pardec_result_text", "pardec_result_n_blocks", "pardec_result_block",
    "pardec_result_branch", "pardec_result_stats", "pardec_result_logprobs",
    "pardec_model_tokenize", "pardec_model_token_piece", "pardec_model_detokenize", "pardec_model_special_tokens",
    "pardec_model_token_is_eog", "pardec_session_generate_auto_stop", "pardec_grammar_json_object",
    "pardec_grammar_from_json_schema",
    "pardec_conversations_params_default", "pardec_request_params_default", "pardec_conversations_new",
    "pardec_conversations_free", "pardec_conversations_submit", "pardec_conversations_cancel",
    "pardec_conversations_step", "pardec_conversations_next_outcome",
]

#: Every struct mirrored here, by C name (tests compare their fields with the header).
STRUCTS: Dict[str, Type[Structure]] = {
    cls.__name__: cls
    for cls in (
        pardec_model_params, pardec_chat_message, pardec_sampling_params, pardec_logit_bias,
        pardec_session_params,
        pardec_run_limits, pardec_block_info, pardec_branch_info, pardec_stats, pardec_event,
        pardec_top_logprob, pardec_token_logprob, pardec_special_tokens,
        pardec_conversations_params, pardec_request_params, pardec_outcome_info,
    )
}
