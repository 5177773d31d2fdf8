"""An app of its own for the deploy-lifecycle tests (tokens, refused deploys)."""

import raygpu

app = raygpu.App("guarded")


@app.function(scaledown_window=2)
def add(a: int, b: int = 1) -> int:
    """Add two integers."""
    return a + b
