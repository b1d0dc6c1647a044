"""What a handle used by one thread at a time shares (a session, conversations): a lock that
is never waited on — a second caller (another thread, or a callback re-entering) gets BUSY, as
from the C API — and a close that releases the C handle once."""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, TypeVar

from ._errors import ClosedError, PardecError, Status

_H = TypeVar("_H", bound="ExclusiveHandle")


class ExclusiveHandle:
    """A C handle used by one call at a time. Subclasses call :meth:`_own` with the pointer
    and its free function, and name what they are in ``_what``."""

    _what = "handle"

    def _own(self, ptr: int, free: Callable[[int], None]) -> None:
        self._ptr: Optional[int] = ptr
        # Held for the duration of every call, never waited on.
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, free, ptr)
        self._finalizer.atexit = False

    @contextmanager
    def _use(self) -> Iterator[int]:
        if not self._lock.acquire(blocking=False):
            raise PardecError(Status.BUSY, f"{self._what} in use (a call from its own callback, or another thread)")
        try:
            if self._ptr is None:
                raise ClosedError(self._what)
            yield self._ptr
        finally:
            self._lock.release()

    def close(self) -> None:
        """Releases the C handle. Closing twice is allowed; closing while a call is running
        (from a callback or another thread) raises BUSY."""
        if not self._lock.acquire(blocking=False):
            raise PardecError(Status.BUSY, f"cannot close the {self._what} while a call is running")
        try:
            if self._ptr is not None:
                self._ptr = None
                self._finalizer()
        finally:
            self._lock.release()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._ptr is None

    def __enter__(self: _H) -> _H:
        """The object itself; leaving the block closes it."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Closes it."""
        self.close()
