import raygpu

app = raygpu.App("versioned")

ANSWER = "v1"


@app.function(min_containers=1, scaledown_window=60, max_inputs=8)
def which() -> str:
    return ANSWER
