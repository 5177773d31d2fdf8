"""An app whose enter hooks fail on demand (the tests rewrite FAIL): a version that cannot start
must never replace the live one."""

import raygpu

app = raygpu.App("gated")

ANSWER = "v1"
FAIL = False


@app.cls(min_containers=1, scaledown_window=60)
class Pinned:
    @raygpu.enter()
    def load(self) -> None:
        if FAIL:
            raise RuntimeError(f"weights missing for {ANSWER}")
        self.answer = ANSWER

    @raygpu.method()
    def which(self) -> str:
        return self.answer


@app.cls(scaledown_window=2)
class OnDemand:
    @raygpu.enter()
    def load(self) -> None:
        if FAIL:
            raise RuntimeError(f"tokenizer missing for {ANSWER}")
        self.answer = ANSWER

    @raygpu.method()
    def which(self) -> str:
        return self.answer
