"""Functions of the library itself, not of a model or session: its version and path, and the
grammars it makes."""

from __future__ import annotations

import json
from ctypes import byref, c_void_p
from typing import Any, Mapping, Union

from . import _lib as _c
from ._errors import _check, _take_string
from ._params import _encode


def version() -> str:
    """The loaded library's version (``pardec_version()``); the package's is ``__version__``."""
    raw: bytes = _c.lib().pardec_version()
    return raw.decode()


def json_object_grammar() -> str:
    """A GBNF grammar for exactly one JSON object (``pardec_grammar_json_object()``), for the
    ``grammar`` keyword of :meth:`Session.generate` and :meth:`Session.fork`."""
    raw: bytes = _c.lib().pardec_grammar_json_object()
    return raw.decode()


def json_schema_grammar(schema: Union[str, Mapping[str, Any]]) -> str:
    """A GBNF grammar for the JSON values a JSON Schema describes, as llama.cpp converts a
    schema (``pardec_grammar_from_json_schema``; llama-server's ``json_schema``), for the
    ``grammar`` keyword. ``schema``: the schema as JSON text or as a dict. Raises
    :class:`PardecError` (INVALID_ARGUMENT) for text that is not JSON or a schema llama.cpp
    cannot convert."""
    text = schema if isinstance(schema, str) else json.dumps(schema)
    out = c_void_p()
    _check(_c.lib().pardec_grammar_from_json_schema(_encode(text, "schema"), byref(out)))
    return _take_string(out)


def library_path() -> str:
    """The path libpardec is loaded from (loading it if it is not yet)."""
    _c.lib()
    path = _c.loaded_path()
    assert path is not None
    return str(path)
