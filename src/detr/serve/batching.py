"""Dynamic batching for ``detr serve``: concurrent requests' images run through the model together.

Images wait up to ``max_wait_ms`` for others to join them, up to ``max_batch_size``. Only images of
the same padded size and the same prediction options share a batch, as ``detr predict --batch-size``
groups them (:mod:`detr.engine.predict`): each image is padded as it would be alone. One thread runs
the model: requests queue up instead of competing for the cores.

Every batch runs at one shape, ``max_batch_size`` images, places no request took filled with copies
of one of its images (their results dropped). Batched kernels may sum in another order at another
batch size (float32 rounding: the tiny test model's logits move by about 1e-6), which can swap two
near-tied detections or move one across the threshold, so an image's detections would depend on who
else was waiting; at one shape they were bit-for-bit the same at every place in the batch, whatever
the neighbours (measured on CPU). Rounding the answers would not do: a value within float noise of a
rounding boundary still rounds both ways. The price: a lone image costs a whole batch's pass
(``--max-batch-size`` trades that latency against throughput under load). Padded and unpadded
images do not share a batch either: a batch with no padding takes the unmasked path
(:mod:`detr.deploy.inference`), on a GPU other attention kernels than the masked one's.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..processing.preprocess import Batch


@dataclass
class _Waiting:
    batch: Batch  # one preprocessed image
    done: Callable[[Any, BaseException | None], None]  # called from the model's thread with (result, error)
    since: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Runs ``run(key, batch)`` (a :class:`~detr.processing.preprocess.Batch` of B images of one
    padded size -> B results) on the images submitted, batched by ``key``.

    Args:
        run: the model call; ``key`` carries the prediction options the batch shares. It always gets
            ``max_batch_size`` images, those past the submitted ones copies (see the module's docstring).
        max_batch_size: images in one call.
        max_wait_ms: longest time the first image of a batch waits for others.
        on_batch: called with the number of submitted images in each batch (metrics).
    """

    def __init__(
        self,
        run: Callable[[Hashable, Batch], Sequence[Any]],
        max_batch_size: int = 8,
        max_wait_ms: float = 10.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch
        self._waiting: dict[Hashable, list[_Waiting]] = {}  # key -> images in arrival order
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    @property
    def queue_length(self) -> int:
        """Images waiting for the model (not counting the batch it is running)."""
        with self._cond:
            return sum(map(len, self._waiting.values()))

    def submit(self, key: Hashable, batch: Batch, done: Callable[[Any, BaseException | None], None]) -> None:
        """Queue one image (a ``Batch`` of 1); ``done(result, error)`` is called from the model's thread."""
        if len(batch) != 1:
            raise ValueError(f"submit one image at a time, got a batch of {len(batch)}")
        with self._cond:
            if self._closing:
                raise RuntimeError("the server is stopping")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="detr-batcher", daemon=True)
                self._thread.start()
            padded = tuple(batch.pixel_values.shape[2:])  # each image padded as if alone
            masked = bool(batch.mask.any())  # the model's masked or unmasked path, whoever else is in the batch
            self._waiting.setdefault((padded, masked, key), []).append(_Waiting(batch, done))
            self._cond.notify_all()

    async def predict(self, key: Hashable, batch: Batch) -> Any:
        """``submit`` for asyncio: the image's result, or the model's exception raised here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            def settle() -> None:
                if future.cancelled():
                    return
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)

            loop.call_soon_threadsafe(settle)

        self.submit(key, batch, done)
        return await future

    def close(self, timeout: float | None = 30.0) -> None:
        """Run what is queued, then stop the model's thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _next_group(self) -> tuple[Hashable, list[_Waiting]] | None:
        """The next batch (its options key and images): the group whose first image waited longest,
        once it is full or its time is up."""
        with self._cond:
            while True:
                if not self._waiting:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                key = min(self._waiting, key=lambda k: self._waiting[k][0].since)
                group = self._waiting[key]
                left = group[0].since + self.max_wait - time.monotonic()
                if len(group) >= self.max_batch_size or left <= 0 or self._closing:
                    taken, rest = group[: self.max_batch_size], group[self.max_batch_size :]
                    if rest:
                        self._waiting[key] = rest
                    else:
                        del self._waiting[key]
                    return key[-1], taken
                self._cond.wait(left)

    def _loop(self) -> None:
        while (next_group := self._next_group()) is not None:
            key, group = next_group
            if self.on_batch is not None:
                self.on_batch(len(group))
            filler = [group[-1].batch] * (self.max_batch_size - len(group))  # one shape for every batch
            try:
                results = self.run(key, Batch.concat([w.batch for w in group] + filler))[: len(group)]
            except BaseException as err:  # the model's error goes to every request of the batch
                for waiting in group:
                    waiting.done(None, err)
                continue
            for waiting, result in zip(group, results, strict=True):
                waiting.done(result, None)
