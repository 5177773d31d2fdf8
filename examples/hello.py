"""The smallest raygpu app: one plain function behind an HTTP route."""

import raygpu

app = raygpu.App("hello")


@app.function(scaledown_window=10)
def greet(name: str = "world", excited: bool = False) -> str:
    """Greet someone."""
    return f"hello {name}" + ("!" if excited else "")
