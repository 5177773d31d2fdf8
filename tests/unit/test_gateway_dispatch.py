"""The gateway's admission, bring-back and resends, driven in-process through its seams: fake Serve
handles that answer, refuse, die or drain on cue; a fake parker; a routing table of one function."""

import asyncio
import json
from types import SimpleNamespace

import ray
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from deployments import constants
from deployments.gateway.admission import Admission
from deployments.gateway.dispatch import Dispatcher
from deployments.spec import DeployedFunction, FunctionSpec

OK = (200, b'{"ok":true}', 3, {})
DRAINING = (503, b'{"error":{"type":"ReplicaReplaced"}}', 3, {constants.DRAINING_HEADER: "1"})


class Answer:
    """What one call of a fake handle does: return `value`, raise `error`, or never answer."""

    def __init__(self, value=None, error=None, hang=False):
        self.value, self.error, self.hang, self.cancelled = value, error, hang, False

    def __await__(self):
        return self._run().__await__()

    async def _run(self):
        if self.hang:
            await asyncio.sleep(3600)
        if self.error is not None:
            raise self.error
        return self.value

    def cancel(self):
        self.cancelled = True


class FakeHandle:
    """A Serve handle whose calls answer as scripted, in order (the last one repeats)."""

    def __init__(self, *script):
        self.script = list(script)
        self.calls = []

    def remote(self, *args):
        self.calls.append(args)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return step if isinstance(step, Answer) else Answer(value=step)


class FakeParker:
    def __init__(self, back=True, fail=False):
        self.back, self.fail, self.asked = back, fail, []
        self.unpark = SimpleNamespace(remote=self._unpark)

    async def _unpark(self, app, function):
        self.asked.append((app, function))
        if self.fail:
            raise ConnectionError("parker restarting")
        return self.back


def deployed(**settings) -> DeployedFunction:
    spec = FunctionSpec(name="fn", kind="function", **{"timeout": 5, "startup_timeout": 5, **settings})
    return DeployedFunction(spec=spec, serve_app="raygpu-app-a--v3", deployment="fn")


def dispatcher(handle, parker=None, parked=()):
    table = SimpleNamespace(parked=set(parked), apps={"a": {"version": 3}})
    return Dispatcher(lambda app, d: handle, lambda: parker or FakeParker(), lambda: table)


def call(d, target):
    return asyncio.run(d.call("a", target, None, {"x": 1}, 7))


def body(response):
    return json.loads(response.body)


def test_admission_refuses_beyond_the_queue_bound_and_releases():
    admission = Admission()
    key = ("a", "fn")
    bound = deployed(max_containers=1, max_inputs=2, max_queue=1).spec.queue_bound
    assert bound == 3
    assert [admission.admit(key, bound) for _ in range(4)] == [True, True, True, False]
    admission.release(key)
    assert admission.admit(key, bound) and admission.count(key) == 3 and admission.total() == 3
    for _ in range(3):
        admission.release(key)
    assert admission.count(key) == 0 and admission.inflight == {}


def test_a_full_replica_queue_answers_503_with_retry_after():
    handle = FakeHandle(Answer(error=BackPressureError(num_queued_requests=3, max_queued_requests=3)))
    response = call(dispatcher(handle), deployed())
    assert response.status_code == 503 and response.headers["Retry-After"] == str(constants.RETRY_AFTER_S)
    assert body(response)["error"]["type"] == "QueueFull" and len(handle.calls) == 1


def test_a_dead_replica_is_resent_as_often_as_retries_allow():
    died = Answer(error=ray.exceptions.ActorDiedError())
    handle = FakeHandle(died, OK)
    response = call(dispatcher(handle), deployed(retries=1))
    assert response.status_code == 200 and response.headers["x-raygpu-version"] == "3"
    assert len(handle.calls) == 2
    again = FakeHandle(Answer(error=ray.exceptions.ActorDiedError()))
    response = call(dispatcher(again), deployed(retries=0))
    assert response.status_code == 500 and body(response)["error"]["type"] == "ReplicaDied"
    assert len(again.calls) == 1


def test_a_draining_replica_sends_the_call_to_its_replacement():
    handle = FakeHandle(DRAINING, DRAINING, OK)
    response = call(dispatcher(handle), deployed())
    assert response.status_code == 200 and constants.DRAINING_HEADER not in response.headers
    assert len(handle.calls) == 3


def test_a_function_parked_under_the_call_is_brought_back_once_and_the_call_resent():
    parker = FakeParker()
    handle = FakeHandle(Answer(error=DeploymentUnavailableError("fn")), OK)
    response = call(dispatcher(handle, parker), deployed())
    assert response.status_code == 200 and parker.asked == [("a", "fn")] and len(handle.calls) == 2


def test_a_parked_function_is_brought_back_before_the_call():
    parker = FakeParker()
    handle = FakeHandle(OK)
    assert call(dispatcher(handle, parker, parked={("a", "fn")}), deployed()).status_code == 200
    assert parker.asked == [("a", "fn")]
    gone = FakeParker(back=False)
    response = call(dispatcher(FakeHandle(OK), gone, parked={("a", "fn")}), deployed())
    assert response.status_code == 404 and "no longer deployed" in body(response)["error"]["message"]


def test_a_parker_that_cannot_answer_gives_503_and_no_call():
    handle = FakeHandle(OK)
    response = call(dispatcher(handle, FakeParker(fail=True), parked={("a", "fn")}), deployed())
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert body(response)["error"]["type"] == "Unavailable" and handle.calls == []


def test_a_call_past_its_deadline_answers_504_and_is_cancelled():
    hanging = Answer(hang=True)
    handle = FakeHandle(hanging)
    response = call(dispatcher(handle), deployed(timeout=0.2, startup_timeout=0.1))
    assert response.status_code == 504 and "0.3 s" in body(response)["error"]["message"]
    assert hanging.cancelled


def test_resending_to_a_draining_replica_stops_at_the_deadline():
    handle = FakeHandle(DRAINING)
    response = call(dispatcher(handle), deployed(timeout=0.3, startup_timeout=0.1))
    assert response.status_code == 503  # the replica's own answer once the deadline is past
    assert 1 < len(handle.calls) <= 0.4 / constants.DRAINING_RETRY_S + 2
