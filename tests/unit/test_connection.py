"""What attaching to a cluster changes in this process: Ray's broadcast warnings leave stdout (where
the CLI writes JSON) for stderr."""

from ray._private import worker

from raygpu.sdk.connection import ray_messages_to_stderr


def test_ray_driver_messages_go_to_stderr(monkeypatch, capsys):
    monkeypatch.setattr(worker, "print_to_stdstream", worker.print_to_stdstream)  # restored after the test
    ray_messages_to_stderr()
    ray_messages_to_stderr()  # idempotent: wrapped once
    worker.print_to_stdstream({"lines": ["raylet says hello"], "pid": "raylet", "is_err": False}, False)
    out, err = capsys.readouterr()
    assert out == "" and "raylet says hello" in err
