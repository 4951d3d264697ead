"""The structured-output masks of a step: one worker thread computes each
constrained sampler's mask of allowed next tokens (llguidance drops the GIL)
while the step's forward pass runs; the native sampler waits for its mask."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .sampling import Sampler
    from .structured import Constraint


class Pending:
    """Work handed to the mask worker: wait() blocks until it has run and
    returns its result (or raises its error)."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.value: Any = None
        self.error: BaseException | None = None
        self.constraints: list[Constraint] = []
        self._latch = threading.Lock()
        self._latch.acquire()  # released when it has run

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as e:  # noqa: BLE001 - handed to wait()
            self.error = e
        finally:
            self._latch.release()

    def wait(self) -> Any:
        with self._latch:
            pass
        if self.error is not None:
            raise self.error
        return self.value


class _Worker:
    """One daemon thread running Pending work in order. (A plain queue and
    a lock a job: a step hands it work every time, so it is kept cheap.)"""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Pending] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="llmrt-masks", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self._q.get().run()

    def submit(self, fn: Callable[[], Any]) -> Pending:
        p = Pending(fn)
        self._q.put(p)
        return p


_worker: _Worker | None = None
_worker_lock = threading.Lock()


def submit(fn: Callable[[], Any]) -> Pending:
    """Runs fn on the mask worker thread (one per process; llguidance drops
    the GIL while it computes)."""
    global _worker
    if _worker is None:
        with _worker_lock:
            if _worker is None:
                _worker = _Worker()
    return _worker.submit(fn)


def start_masks(samplers: Iterable["Sampler"]) -> Pending | None:
    """Before a step: the constrained samplers among those drawing in it
    expect their masks, which the worker computes while the step runs.
    Returns the work to finish (finish_masks) or None."""
    cs = [s.constraint for s in samplers if s.constraint is not None and s.constraint.active]
    if not cs:
        return None
    for c in cs:
        c.sampler.expect_mask()

    def fill() -> None:
        for c in cs:
            c.fill()
    p = submit(fill)
    p.constraints = cs
    return p


def finish_masks(p: Pending | None) -> None:
    """After the step (run or failed): the worker is done with the masks,
    and a mask no draw used is forgotten."""
    if p is None:
        return
    p.wait()
    for c in p.constraints:
        c.sampler.clear_mask()


def masked(logits: np.ndarray, words: np.ndarray) -> np.ndarray:
    """A copy of a row of logits with the tokens the mask's words disallow at -inf."""
    allowed = np.unpackbits(words.view(np.uint8), bitorder="little")[:logits.shape[-1]]
    out = np.array(logits, np.float32, copy=True)
    out[allowed == 0] = -np.inf
    return out
