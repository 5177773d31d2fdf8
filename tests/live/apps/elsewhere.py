"""Another app, at zero replicas until called: what a cold call beside a flood of waiters reaches."""

import raygpu

app = raygpu.App("elsewhere")


@app.function(scaledown_window=2)
def ping(x: int) -> int:
    return x + 1
