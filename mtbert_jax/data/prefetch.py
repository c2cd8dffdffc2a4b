"""Batches made and put on the devices in a background thread while the devices compute.

The thread runs the loader through the rest of its epoch, prepares each step's batches (this
process's rows, split and transferred to the local devices) and hands them over through a short
queue, each with the loader's position after it, so that a checkpoint taken after step k holds
exactly the position an unprefetched run would have saved.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable, Iterator, Mapping, Optional

from mtbert_jax.batch import WEIGHTS
from mtbert_jax.data.loader import MultiTaskLoader


@dataclasses.dataclass
class Prefetched:
    batches: Mapping[str, Any]  # {task: prepared batch}
    examples: float  # real (weight 1) examples in the step, all processes
    position: dict  # loader.position() after this step
    padding_efficiency: float  # real / padded tokens of the run so far, after this step
    tokens: float = 0.0  # real tokens in the step, all processes (`measure`)
    flops: float = 0.0  # the step's model FLOPs, all processes (`measure`)


_DONE = object()


class Prefetcher:
    """Iterates over the rest of the loader's current epoch, `depth` steps ahead.

    The loader belongs to the thread until `close()`, which stops it and, when the epoch was not
    used up, puts the loader back at the position after the last step handed out.
    """

    def __init__(self, loader: MultiTaskLoader, prepare: Callable[[Mapping[str, Any]], Mapping[str, Any]],
                 depth: int = 2, measure: Optional[Callable[[Mapping[str, Any]], tuple[float, float]]] = None):
        # measure(host batches) -> (real tokens, model FLOPs): counted here, off the main thread.
        self.loader, self.prepare, self.measure = loader, prepare, measure
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.last_position = loader.position()
        self.exhausted = False
        self.thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self.thread.start()

    def _produce(self) -> None:
        try:
            for batches in self.loader:
                examples = sum(float(b[WEIGHTS].sum()) for b in batches.values())
                tokens, flops = self.measure(batches) if self.measure else (0.0, 0.0)
                item = Prefetched(self.prepare(batches), examples, self.loader.position(),
                                  self.loader.padding.efficiency, tokens, flops)
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as e:  # handed to the consumer, raised there
            self._put(e)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Prefetched]:
        while True:
            item = self.queue.get()
            if item is _DONE:
                self.exhausted = True
                return
            if isinstance(item, BaseException):
                raise item
            self.last_position = item.position
            yield item

    def close(self) -> None:
        """Stops the thread; an epoch left unfinished resumes after the last step handed out."""
        self.stop.set()
        self.thread.join()
        if not self.exhausted:
            self.loader.restore(self.last_position)
