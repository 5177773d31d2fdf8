import os

import raygpu

app = raygpu.App("warm")


@app.function(gpu=1, scaledown_window=2)
def whoami() -> int:
    return os.getpid()
