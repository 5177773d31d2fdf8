import raygpu

app = raygpu.App("basic")


@app.function(max_inputs=0)
def add(a: int) -> int:
    return a
