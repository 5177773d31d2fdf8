import time

import raygpu

app = raygpu.App("metered")


@app.function(gpu="H100", scaledown_window=20, max_inputs=2)
def infer(seconds: float) -> str:
    time.sleep(seconds)
    return "ok"
