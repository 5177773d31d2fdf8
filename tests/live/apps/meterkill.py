import time

import raygpu

app = raygpu.App("meterkill")


@app.function(gpu="H100", scaledown_window=15, max_inputs=4)
def work(seconds: float) -> str:
    time.sleep(seconds)
    return "done"
