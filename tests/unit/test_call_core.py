"""The call core driven in-process through its seams: fake Serve handles that answer, refuse, die
or drain on cue, a fake parker, a recorded sleep; and the gateway's HTTP answers made from it."""

import asyncio
import json

import pytest
import ray
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from deployments import constants
from deployments.calls.admission import Admission
from deployments.calls.context import (
    ATTEMPT_HEADER,
    CALL_ID_HEADER,
    DEADLINE_HEADER,
    CallContext,
    CallIdError,
    checked_call_id,
    context_of,
)
from deployments.calls.core import MAX_RESENDS, CallCore, call_budget
from deployments.calls.retries import Retries
from deployments.errors import (
    ERROR_SOURCE_HEADER,
    FunctionNotFound,
    FunctionTimeout,
    InvalidArguments,
    InvalidSpecError,
    QueueFull,
    RemoteCallError,
    RemoteError,
    ReplicaLost,
    Unavailable,
    call_error,
)
from deployments.gateway.dispatch import Dispatcher
from deployments.spec import DeployedFunction, FunctionSpec

OK = (200, b'{"ok":true}', 3, {})
DRAINING = (503, b'{"error":{"type":"ReplicaReplaced"}}', 3, {constants.DRAINING_HEADER: "1"})
RAISED = (500, b'{"error":{"type":"ValueError","message":"boom"}}', 3, {ERROR_SOURCE_HEADER: "user"})
CALLEE_FULL = (
    503,
    b'{"error":{"type":"QueueFull","message":"full"}}',
    3,
    {ERROR_SOURCE_HEADER: "callee", "Retry-After": "1"},
)


class Step:
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
        return step if isinstance(step, Step) else Step(value=step)


class FakeParker:
    def __init__(self, back=True, fail=False):
        self.back, self.fail, self.asked = back, fail, []

    async def bring_back(self, app, function):
        self.asked.append((app, function))
        if self.fail:
            raise Unavailable(message="parker restarting")
        if not self.back:
            raise FunctionNotFound(message=f"{app}/{function} is no longer deployed")


class Sleeps:
    """A sleep that records each pause and returns at once."""

    def __init__(self):
        self.pauses = []

    async def __call__(self, seconds):
        self.pauses.append(seconds)
        await asyncio.sleep(0)


def deployed(**settings) -> DeployedFunction:
    spec = FunctionSpec(name="fn", kind="function", **{"timeout": 5, "startup_timeout": 5, **settings})
    return DeployedFunction(spec=spec, serve_app="raygpu-app-a--v3", deployment="fn")


def core(handle, parker=None, parked=(), sleep=None, factory=None):
    parker = parker or FakeParker()
    return CallCore(
        bring_back=parker.bring_back,
        parked=(lambda app, fn: (app, fn) in set(parked)) if parked is not None else None,
        handle_factory=factory or (lambda d: handle),
        sleep=sleep or asyncio.sleep,
    )


def run(c, target, **kwargs):
    return asyncio.run(c.call("a", target, None, {"x": 1}, 7, **kwargs))


# --- admission --------------------------------------------------------------------------------
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


def test_a_caller_admitted_by_the_core_gets_queue_full_beyond_the_bound_and_is_released():
    target = deployed(max_containers=1, max_inputs=1, max_queue=0)
    c = core(FakeHandle(OK))
    assert c.admit("a", target.spec)
    with pytest.raises(QueueFull) as raised:
        run(c, target, admit=True)
    assert raised.value.status == 503 and raised.value.headers["Retry-After"]
    c.release("a", target.spec)
    assert run(c, target, admit=True).status == 200 and c.admission.total() == 0


def test_a_full_replica_queue_is_queue_full_with_retry_after_and_no_resend():
    handle = FakeHandle(Step(error=BackPressureError(num_queued_requests=3, max_queued_requests=3)))
    with pytest.raises(QueueFull) as raised:
        run(core(handle), deployed())
    assert raised.value.headers["Retry-After"] == str(constants.RETRY_AFTER_S) and len(handle.calls) == 1


def test_a_spawned_call_waits_out_a_full_queue():
    full = Step(error=BackPressureError(num_queued_requests=3, max_queued_requests=3))
    handle = FakeHandle(full, full, OK)
    sleeps = Sleeps()
    answer = run(core(handle, sleep=sleeps), deployed(), wait_when_full=True)
    assert answer.status == 200 and len(handle.calls) == 3 and len(sleeps.pauses) == 2


# --- resends ----------------------------------------------------------------------------------
def test_a_dead_replica_is_resent_a_bounded_number_of_times_then_replica_lost():
    handle = FakeHandle(Step(error=ray.exceptions.ActorDiedError()), OK)
    c = core(handle)
    answer = run(c, deployed())
    assert answer.status == 200 and answer.resends == 1 and answer.attempts == 1 and len(handle.calls) == 2
    assert c.counters.resends == 1
    dead = FakeHandle(Step(error=ray.exceptions.ActorDiedError()))
    with pytest.raises(ReplicaLost) as raised:
        run(core(dead), deployed())
    assert raised.value.status == 503 and raised.value.error_type == "ReplicaLost"
    assert len(dead.calls) == MAX_RESENDS + 1 and "raygpu logs a/fn" in raised.value.message


def test_a_draining_replica_sends_the_call_to_its_replacement():
    handle = FakeHandle(DRAINING, DRAINING, OK)
    answer = run(core(handle), deployed())
    assert answer.status == 200 and constants.DRAINING_HEADER not in answer.headers and len(handle.calls) == 3


def test_a_replica_gone_after_a_draining_answer_is_part_of_the_replacement_not_a_loss():
    died = Step(error=ray.exceptions.ActorDiedError())
    handle = FakeHandle(DRAINING, died, died, died, died, died, OK)
    answer = run(core(handle), deployed())
    assert answer.status == 200 and answer.resends == 0


def test_a_function_parked_under_the_call_is_brought_back_once_and_the_call_resent():
    parker = FakeParker()
    handle = FakeHandle(Step(error=DeploymentUnavailableError("fn")), OK)
    answer = run(core(handle, parker), deployed())
    assert answer.status == 200 and parker.asked == [("a", "fn")] and len(handle.calls) == 2


def test_a_caller_that_does_not_follow_the_parked_set_asks_the_parker_only_when_there_is_no_deployment():
    parker = FakeParker()
    opened = []

    def factory(d):
        opened.append(d.deployment)
        if len(opened) == 1:
            raise KeyError("Deployment 'fn' in application 'raygpu-app-a--v3' does not exist")
        return FakeHandle(OK)

    c = CallCore(bring_back=parker.bring_back, parked=None, handle_factory=factory)
    assert run(c, deployed()).status == 200 and parker.asked == [("a", "fn")]
    assert run(c, deployed()).status == 200 and parker.asked == [("a", "fn")] and len(opened) == 2


def test_a_parked_function_is_brought_back_before_the_call():
    parker = FakeParker()
    assert run(core(FakeHandle(OK), parker, parked={("a", "fn")}), deployed()).status == 200
    assert parker.asked == [("a", "fn")]
    assert run(core(FakeHandle(OK), FakeParker(), parked=set()), deployed()).status == 200
    with pytest.raises(FunctionNotFound):
        run(core(FakeHandle(OK), FakeParker(back=False), parked={("a", "fn")}), deployed())


def test_a_parker_that_cannot_answer_is_unavailable_and_no_call():
    handle = FakeHandle(OK)
    with pytest.raises(Unavailable):
        run(core(handle, FakeParker(fail=True), parked={("a", "fn")}), deployed())
    assert handle.calls == []


# --- deadlines --------------------------------------------------------------------------------
def test_a_call_past_its_deadline_is_a_function_timeout_and_is_cancelled():
    hanging = Step(hang=True)
    with pytest.raises(FunctionTimeout) as raised:
        run(core(FakeHandle(hanging)), deployed(timeout=0.2, startup_timeout=0.1))
    assert raised.value.status == 504 and hanging.cancelled


def test_resending_to_a_draining_replica_stops_at_the_deadline():
    handle = FakeHandle(DRAINING)
    with pytest.raises(FunctionTimeout):
        run(core(handle), deployed(timeout=0.3, startup_timeout=0.1))
    assert 1 < len(handle.calls) <= 0.4 / constants.DRAINING_RETRY_S + 2


def test_a_nested_call_gets_at_most_what_is_left_of_its_callers_deadline():
    import time

    handle = FakeHandle(OK)
    c = core(handle)
    caller = CallContext("outer-call", deadline=time.time() + 2.0)
    answer = run(c, deployed(timeout=300), caller=caller)
    sent = handle.calls[0][3]
    assert answer.call_id == "outer-call" and sent[CALL_ID_HEADER] == "outer-call"
    assert float(sent[DEADLINE_HEADER]) <= caller.deadline + 0.01 and sent[ATTEMPT_HEADER] == "1"
    hanging = Step(hang=True)
    with pytest.raises(FunctionTimeout):
        run(core(FakeHandle(hanging)), deployed(timeout=300), caller=CallContext("x", deadline=time.time() + 0.2))
    assert hanging.cancelled


def test_the_budget_covers_a_start_and_every_run_with_its_pauses():
    spec = deployed(timeout=10, startup_timeout=30, retries=Retries(max_retries=2, initial_delay=1)).spec
    assert call_budget(spec) == 30 + 3 * 10 + 1 + 2


# --- retries ----------------------------------------------------------------------------------
def test_a_call_whose_code_raised_runs_again_with_backoff_and_counts_its_attempts():
    handle = FakeHandle(RAISED, RAISED, OK)
    sleeps = Sleeps()
    policy = Retries(max_retries=2, initial_delay=0.5, backoff_coefficient=3.0)
    answer = run(core(handle, sleep=sleeps), deployed(retries=policy))
    assert answer.status == 200 and answer.attempts == 3 and len(handle.calls) == 3
    assert sleeps.pauses == [0.5, 1.5]
    assert [c[3][ATTEMPT_HEADER] for c in handle.calls] == ["1", "2", "3"]
    assert [r["status"] for r in answer.runs] == [500, 500, 200] and answer.runs[0]["error_type"] == "ValueError"
    assert answer.response_headers()["x-raygpu-attempts"] == "3"


def test_retries_stop_at_max_retries_and_the_last_failure_is_a_remote_error():
    handle = FakeHandle(RAISED)
    answer = run(core(handle, sleep=Sleeps()), deployed(retries=1))
    assert answer.status == 500 and answer.attempts == 2
    error = answer.error()
    assert isinstance(error, RemoteError) and error.remote_type == "ValueError" and error.message == "boom"


def test_no_retry_for_invalid_arguments_timeouts_or_a_callees_error_escaping_user_code():
    invalid = (422, b'{"error":{"type":"ValidationError","message":"x: field required"}}', 3, {})
    timeout = (504, b'{"error":{"type":"Timeout","message":"slow"}}', 3, {})
    for step, cls in ((invalid, InvalidArguments), (timeout, FunctionTimeout), (CALLEE_FULL, QueueFull)):
        handle = FakeHandle(step)
        answer = run(core(handle, sleep=Sleeps()), deployed(retries=3))
        assert answer.attempts == 1 and len(handle.calls) == 1
        assert isinstance(answer.error(), cls) and answer.error().status == step[0]


def test_a_retry_pause_that_would_pass_the_deadline_ends_the_call_with_its_failure():
    handle = FakeHandle(RAISED, OK)
    answer = run(
        core(handle, sleep=Sleeps()),
        deployed(timeout=0.5, startup_timeout=0.1, retries=Retries(max_retries=1, initial_delay=30)),
        deadline=None,
        caller=CallContext("c", deadline=__import__("time").time() + 1.0),
    )
    assert answer.status == 500 and answer.attempts == 1


def test_bad_retry_policies_fail_at_decoration_naming_the_field():
    for fields, name in (
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1, "backoff_coefficient": 0.5}, "backoff_coefficient"),
        ({"max_retries": 1, "initial_delay": -1}, "initial_delay"),
        ({"max_retries": 1, "max_delay": -2}, "max_delay"),
    ):
        with pytest.raises(InvalidSpecError, match=name):
            Retries(**fields)
    with pytest.raises(ValueError, match="retries"):
        FunctionSpec(name="fn", retries=-1)
    assert FunctionSpec(name="fn", retries=2).retries == Retries(max_retries=2, backoff_coefficient=1.0)


# --- errors and call ids ----------------------------------------------------------------------
def test_error_answers_become_typed_errors_that_survive_pickling():
    import pickle

    full = call_error(503, {"error": {"type": "QueueFull", "message": "m"}}, {"Retry-After": "2"})
    assert isinstance(full, QueueFull) and full.retry_after == 2.0
    other = call_error(404, {"error": {"type": "NotFound", "message": "gone"}})
    assert isinstance(other, FunctionNotFound) and isinstance(other, RemoteCallError)
    again = pickle.loads(pickle.dumps(full))
    assert isinstance(again, QueueFull) and again.headers == full.headers and str(again) == str(full)


def test_call_ids_are_checked_where_they_enter():
    assert checked_call_id("order-42:stage.1") == "order-42:stage.1"
    assert checked_call_id(None).startswith("fc-") and checked_call_id("").startswith("fc-")
    for bad in ("x" * 129, "-leading", "has space", "semi;colon", "new\nline"):
        with pytest.raises(CallIdError):
            checked_call_id(bad)
    assert context_of({CALL_ID_HEADER: "bad id"}) is None
    ctx = context_of({CALL_ID_HEADER: "abc", DEADLINE_HEADER: "not a number", ATTEMPT_HEADER: "2"})
    assert ctx == CallContext("abc", None, 2)


# --- the gateway's answers made from the core -------------------------------------------------
def dispatcher(handle, parker=None, parked=()):
    from types import SimpleNamespace

    table = SimpleNamespace(parked=set(parked), apps={"a": {"version": 3}})
    return Dispatcher(core(handle, parker, parked), lambda: table)


def http_call(d, target, call_id="cid-1"):
    return asyncio.run(d.call("a", target, None, {"x": 1}, 7, call_id=call_id))


def test_the_gateway_answers_call_errors_as_json_with_their_status_and_the_call_id():
    full = FakeHandle(Step(error=BackPressureError(num_queued_requests=3, max_queued_requests=3)))
    response = http_call(dispatcher(full), deployed())
    assert response.status_code == 503 and response.headers["Retry-After"] == str(constants.RETRY_AFTER_S)
    assert json.loads(response.body)["error"]["type"] == "QueueFull" and response.headers[CALL_ID_HEADER] == "cid-1"
    dead = FakeHandle(Step(error=ray.exceptions.ActorDiedError()))
    response = http_call(dispatcher(dead), deployed())
    assert response.status_code == 503 and json.loads(response.body)["error"]["type"] == "ReplicaLost"


def test_the_gateway_answer_carries_version_call_id_and_attempts():
    response = http_call(dispatcher(FakeHandle(RAISED, OK)), deployed(retries=Retries(max_retries=1, initial_delay=0)))
    assert response.status_code == 200 and response.headers["x-raygpu-version"] == "3"
    assert response.headers[CALL_ID_HEADER] == "cid-1" and response.headers["x-raygpu-attempts"] == "2"
