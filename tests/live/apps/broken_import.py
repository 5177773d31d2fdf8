import raygpu

app = raygpu.App("basic")


@app.function()
def add(a: int) -> int:
    return a


raise RuntimeError("this module is broken on purpose")
