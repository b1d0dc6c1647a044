"""Errors: the status codes of the C API, the exceptions they raise, and the checks of what a
C call returned (its status, a handle it wrote, a string it handed over)."""

from __future__ import annotations

import ctypes
import enum
from ctypes import c_void_p
from typing import Any, Dict, Optional, Union

from . import _lib as _c


class Status(enum.IntEnum):
    """``enum pardec_status`` (values are part of the C ABI)."""

    OK = 0
    NULL_ARGUMENT = 1
    INVALID_UTF8 = 2
    INVALID_ARGUMENT = 3
    STRUCT_SIZE = 4
    OUT_OF_RANGE = 5
    BUSY = 6
    BACKEND = 7
    MODEL_NOT_FOUND = 8
    NOT_GGUF = 9
    MODEL_LOAD = 10
    UNSUPPORTED_MODEL = 11
    CONTEXT = 12
    EMPTY_PROMPT = 13
    PROMPT_TOO_LONG = 14
    EMPTY_BRANCH_PREFIX = 15
    TOO_MANY_BRANCHES = 16
    DEPTH_LIMIT = 17
    INVALID_STATE = 18
    KV_CACHE_FULL = 19
    CANCELLED = 20
    DECODE = 21
    INTERNAL = 22
    PANIC = 23
    NOT_ADAPTER = 24
    ADAPTER_MISMATCH = 25
    RPC = 26


class PardecError(Exception):
    """A pardec call failed: ``status`` is a :class:`Status`, ``message`` the library's detail."""

    def __init__(self, status: Union[Status, int], message: str = ""):
        """An error of ``status`` (a Status when the value is known) with the library's detail."""
        self.status: Union[Status, int] = _as_status(status)
        self.message = message
        # generate_auto: what the generation did before it stopped midway (else None).
        self.report: Optional[Dict[str, Any]] = None
        name = self.status.name if isinstance(self.status, Status) else str(self.status)
        super().__init__(f"{name}: {message}" if message else name)


def _as_status(value: int) -> Union[Status, int]:
    """``value`` as a Status, or the int itself when no Status has it."""
    try:
        return Status(value)
    except ValueError:
        return value


class Cancelled(PardecError):
    """A callback returned False (or raised: the exception is chained as ``__cause__``). The
    session stays usable."""


class ClosedError(PardecError, ValueError):
    """The object was closed."""

    def __init__(self, what: str):
        """``what`` (e.g. "session") was used after ``close()``."""
        super().__init__(Status.INVALID_STATE, f"{what} is closed")


def _check(status: int) -> None:
    """Raises the PardecError of a failed call's status (with pardec_last_error())."""
    if status != Status.OK:
        raw: Optional[bytes] = _c.lib().pardec_last_error()
        message = (raw or b"").decode("utf-8", "replace")
        cls = Cancelled if status == Status.CANCELLED else PardecError
        raise cls(status, message)


def _take_string(ptr: c_void_p) -> str:
    """Copies a ``char *`` returned by pardec and releases it with pardec_string_free."""
    try:
        return ctypes.string_at(ptr.value).decode("utf-8", "replace") if ptr.value else ""
    finally:
        _c.lib().pardec_string_free(ptr)


def _handle(out: c_void_p) -> int:
    """The handle a successful ``*_load``/``*_new`` call wrote (never NULL then)."""
    if out.value is None:
        raise PardecError(Status.INTERNAL, "the library returned a NULL handle with status OK")
    return out.value
