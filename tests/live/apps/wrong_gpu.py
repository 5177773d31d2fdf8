import raygpu

app = raygpu.App("wronggpu")


@app.function(gpu="A100")
def needs_a100() -> str:
    return "never"
