"""The batch core behind `map`, `starmap` and `raygpu map`, with real threads: the window bounds
the calls in flight, outputs come in input order or as they finish, and a failure is either an
output in place or raised once the calls in flight settle."""

import threading
import time

import pytest

from deployments.signature import bind_positional, is_generator, positional_parameters
from raygpu.sdk.batch import MAX_BATCH_WINDOW, batch_window, run_batch


class Recorder:
    """A call that sleeps a little (longer for early items), fails on chosen items and records
    how many calls ran at once."""

    def __init__(self, fail: set[int] = frozenset(), delay=lambda i: 0.002):
        self.fail, self.delay = fail, delay
        self.lock = threading.Lock()
        self.running = self.peak = 0
        self.started: list[int] = []

    def __call__(self, item: int) -> int:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.started.append(item)
        try:
            time.sleep(self.delay(item))
            if item in self.fail:
                raise ValueError(f"item {item} failed")
            return item * 10
        finally:
            with self.lock:
                self.running -= 1


def test_outputs_come_in_input_order_with_the_window_respected():
    call = Recorder(delay=lambda i: 0.02 if i % 3 == 0 else 0.001)
    out = list(run_batch(call, range(60), window=7))
    assert out == [i * 10 for i in range(60)]
    assert 1 < call.peak <= 7


def test_unordered_outputs_come_as_they_finish():
    call = Recorder(delay=lambda i: 0.3 if i == 0 else 0.001)
    out = list(run_batch(call, range(20), window=4, order_outputs=False))
    assert sorted(out) == [i * 10 for i in range(20)]
    assert out[-1] == 0  # the slow first item is the last out


def test_a_failure_is_returned_in_place_when_asked():
    call = Recorder(fail={5, 17})
    out = list(run_batch(call, range(30), window=5, return_exceptions=True))
    assert [o for i, o in enumerate(out) if i not in (5, 17)] == [i * 10 for i in range(30) if i not in (5, 17)]
    assert isinstance(out[5], ValueError) and str(out[5]) == "item 5 failed"
    assert isinstance(out[17], ValueError)


def test_without_return_exceptions_the_first_failure_stops_new_calls_and_raises_after_in_flight_settle():
    call = Recorder(fail={10}, delay=lambda i: 0.05 if i in (8, 9) else 0.001)
    seen = []
    with pytest.raises(ValueError, match="item 10 failed"):
        for value in run_batch(call, range(200), window=4):
            seen.append(value)
    assert seen == [i * 10 for i in range(10)]  # everything before the failure, in order
    assert call.running == 0  # nothing left running
    assert max(call.started) < 10 + 4 + 1  # no new calls after the failure was seen


def test_the_earliest_failure_wins_in_input_order():
    call = Recorder(fail={3, 9}, delay=lambda i: 0.2 if i == 3 else 0.001)
    with pytest.raises(ValueError, match="item 3 failed"):
        list(run_batch(call, range(12), window=12))


def test_closing_the_iterator_early_stops_new_calls():
    call = Recorder(delay=lambda i: 0.01)
    outputs = run_batch(call, range(1000), window=3)
    assert [next(outputs) for _ in range(5)] == [0, 10, 20, 30, 40]
    outputs.close()
    assert call.running == 0 and len(call.started) < 20


def test_inputs_are_read_lazily():
    produced = []

    def inputs():
        for i in range(10_000):
            produced.append(i)
            yield i

    outputs = run_batch(lambda i: i, inputs(), window=2)
    assert next(outputs) == 0
    outputs.close()
    assert len(produced) < 10


def test_the_window_is_what_the_replicas_take_bounded():
    assert batch_window(4, 8) == 32
    assert batch_window(1, 1) == 1
    assert batch_window(100, 100) == MAX_BATCH_WINDOW
    with pytest.raises(ValueError):
        list(run_batch(lambda i: i, [1], window=0))


def test_positional_arguments_bind_by_parameter_name():
    def embed(text: str, scale: float = 1.0, *, normalize: bool = False) -> None: ...

    params = positional_parameters(embed)
    assert params == ["text", "scale"]
    assert bind_positional("embed", params, ("hi", 2.0), {"normalize": True}) == {
        "text": "hi",
        "scale": 2.0,
        "normalize": True,
    }
    with pytest.raises(TypeError, match="takes 2 positional argument"):
        bind_positional("embed", params, (1, 2, 3), {})
    with pytest.raises(TypeError, match="multiple values for argument 'text'"):
        bind_positional("embed", params, ("a",), {"text": "b"})

    class Model:
        def predict(self, x, y): ...

    assert positional_parameters(Model.predict, skip_first=True) == ["x", "y"]


def test_generators_are_told_apart_from_functions():
    def plain():
        return 1

    def sync_gen():
        yield 1

    async def async_gen():
        yield 1

    assert not is_generator(plain)
    assert is_generator(sync_gen) and is_generator(async_gen)


def test_map_inputs_of_different_lengths_are_refused():
    from raygpu.sdk.client import zip_equal

    assert list(zip_equal(([1, 2], "ab"))) == [(1, "a"), (2, "b")]
    with pytest.raises(ValueError, match="same length; they have 2, 3"):
        zip_equal(([1, 2], [1, 2, 3]))
    with pytest.raises(ValueError, match="same length"):
        list(zip_equal((iter([1, 2]), iter([1]))))
    with pytest.raises(TypeError, match="at least one iterable"):
        zip_equal(())
