"""A function and a class that read a secret's variables (the class in its enter hook too)."""

import os

import raygpu

app = raygpu.App("secretive")
vault = raygpu.Secret.from_name("secretive-vault")


@app.function(secrets=[vault], scaledown_window=5)
def reveal(key: str) -> str:
    return os.environ.get(key, "")


@app.cls(secrets=[vault], scaledown_window=5)
class Greeter:
    @raygpu.enter()
    def load(self) -> None:
        self.seen_at_enter = os.environ.get("VAULT_TOKEN", "")

    @raygpu.method()
    def token_at_enter(self) -> str:
        return self.seen_at_enter
