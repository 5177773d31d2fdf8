"""Many calls of one function with a bounded number in flight: what `fn.map`, `fn.starmap` and
`raygpu map` share. Outputs come in input order or as they finish; a failed item is either its
exception in place or, after the calls in flight settle, raised."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

# Threads a batch may keep in flight from one process, whatever the function's capacity.
MAX_BATCH_WINDOW = 256


def batch_window(max_containers: int, max_inputs: int) -> int:
    """Calls a batch keeps in flight: what the function's replicas can take at once, bounded."""
    return max(1, min(max_containers * max_inputs, MAX_BATCH_WINDOW))


def run_batch(
    call: Callable[[Any], Any],
    inputs: Iterable[Any],
    *,
    window: int,
    order_outputs: bool = True,
    return_exceptions: bool = False,
) -> Iterator[Any]:
    """Yield `call(item)` for every item of `inputs`, at most `window` calls at once.

    With `order_outputs` the outputs come in input order, else as they finish. With
    `return_exceptions` a failed item yields its exception; without, the first failure stops new
    calls and is raised once the calls in flight have settled (in input order, the outputs before
    it are yielded first). Closing the iterator early stops new calls and waits for those in flight."""
    if window < 1:
        raise ValueError("window must be at least 1")
    pending = iter(enumerate(inputs))
    in_flight: dict[Future, int] = {}
    finished: dict[int, tuple[bool, Any]] = {}  # index -> (ok, value or exception)
    next_out = 0
    failure: tuple[int, BaseException] | None = None
    exhausted = False
    executor = ThreadPoolExecutor(max_workers=window, thread_name_prefix="raygpu-map")

    def submit_more() -> None:
        nonlocal exhausted
        while not exhausted and failure is None and len(in_flight) < window:
            try:
                index, item = next(pending)
            except StopIteration:
                exhausted = True
                return
            in_flight[executor.submit(call, item)] = index

    try:
        submit_more()
        while in_flight:
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for future in done:
                index = in_flight.pop(future)
                error = future.exception()
                if error is not None and not return_exceptions and (failure is None or index < failure[0]):
                    failure = (index, error)
                finished[index] = (error is None, error if error is not None else future.result())
            submit_more()
            if order_outputs:
                while next_out in finished:
                    ok, value = finished.pop(next_out)
                    if not ok and not return_exceptions:
                        break
                    next_out += 1
                    yield value
            else:
                for index in sorted(finished):
                    ok, value = finished.pop(index)
                    if ok or return_exceptions:
                        yield value
            if failure is not None and not in_flight:
                raise failure[1]
    finally:
        exhausted = True
        for future in in_flight:
            future.cancel()
        executor.shutdown(wait=True)
