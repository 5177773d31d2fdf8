"""Large request bodies are checked in worker processes (body_worker.py), not on the gateway's
event loop: `json.loads` holds the GIL for as long as it runs, so a thread would not free the loop.
A small pool per gateway replica, started on first use; a worker that fails or overruns is killed
and replaced."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import deployments
from deployments.calls.json_arguments import JsonArguments
from deployments.gateway.body import BodyError, check_shape, parse_arguments, parses_inline

# Workers per gateway replica (each a small Python process), and the longest one check may take.
BODY_CHECK_WORKERS = 2
BODY_CHECK_TIMEOUT_S = 10.0


class BodyCheckUnavailable(RuntimeError):
    """No worker process could be started to check a large body."""


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process

    async def check(self, raw: bytes) -> dict[str, object]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(len(raw).to_bytes(8, "big") + raw)
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        if not line:
            raise ConnectionError("the body-check worker exited")
        return json.loads(line)

    def kill(self) -> asyncio.Future[int] | None:
        """Kill the worker; the future of its exit, to reap it (None outside a running loop)."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(RuntimeError):
            return asyncio.ensure_future(self.process.wait())
        return None


class BodyCheckPool:
    """Up to `size` worker processes; a check waits for a free one."""

    def __init__(self, size: int = BODY_CHECK_WORKERS, timeout_s: float = BODY_CHECK_TIMEOUT_S):
        self.size = size
        self.timeout_s = timeout_s
        self._idle: list[_Worker] = []
        self._running = 0
        self._freed = asyncio.Condition()

    async def _start_worker(self) -> _Worker:
        root = str(Path(deployments.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "deployments.gateway.body_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise BodyCheckUnavailable(f"could not start a body-check worker: {exc}") from exc
        return _Worker(process)

    async def _take(self) -> _Worker:
        async with self._freed:
            while True:
                while self._idle:
                    worker = self._idle.pop()
                    if worker.process.returncode is None:
                        return worker
                    self._running -= 1
                if self._running < self.size:
                    self._running += 1
                    break
                await self._freed.wait()
        try:
            return await self._start_worker()
        except BaseException:
            await self._give_back(None)
            raise

    async def _give_back(self, worker: _Worker | None) -> None:
        async with self._freed:
            if worker is None:
                self._running -= 1
            else:
                self._idle.append(worker)
            self._freed.notify()

    async def arguments(self, raw: bytes) -> dict[str, object] | JsonArguments:
        """A call's keyword arguments from its body: parsed here when small, checked in a worker
        and passed on as JSON text when large; BodyError for a body the gateway refuses."""
        check_shape(raw)
        if parses_inline(raw):
            return parse_arguments(raw)
        await self.check(raw)
        return JsonArguments(raw)

    async def check(self, raw: bytes) -> None:
        """Parse `raw` in a worker: return when it is an acceptable call body, raise BodyError when
        not (a body the worker cannot finish within the timeout, or dies of, is refused too)."""
        worker = await self._take()
        try:
            async with asyncio.timeout(self.timeout_s):
                verdict = await worker.check(raw)
        except BaseException as exc:
            worker.kill()  # mid-message: its stream is out of step, or it is stuck on this body
            await self._give_back(None)
            if isinstance(exc, (TimeoutError, ConnectionError, ValueError)):
                raise BodyError(
                    "BodyTooComplex", f"the body could not be parsed within {self.timeout_s:g} s; send it smaller"
                ) from None
            raise
        await self._give_back(worker)
        if not verdict.get("ok"):
            raise BodyError(str(verdict.get("type", "MalformedJSON")), str(verdict.get("message", "")))

    def close(self) -> None:
        for worker in self._idle:
            worker.kill()
        self._idle.clear()

    async def aclose(self) -> None:
        """Kill the idle workers and reap them."""
        exits = [worker.kill() for worker in self._idle]
        self._idle.clear()
        await asyncio.gather(*(e for e in exits if e is not None))
