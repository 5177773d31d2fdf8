"""The control plane's start-up options: one model from `raygpu up` to the driver to the install,
checked where it is built."""

import pytest
from pydantic import ValidationError

from raygpu.controlplane.local_cluster import local_options
from raygpu.controlplane.options import ControlPlaneOptions
from raygpu.ops.capacity import parse_fake_nodes


def test_what_up_builds_reaches_the_driver_unchanged(tmp_path):
    options = local_options(
        str(tmp_path), http_port=8123, warm_pool="torch=1,vllm=1", callback_allow=["127.0.0.1/32"], park_after_s=0
    ).model_copy(update={"node_types": parse_fake_nodes("A10G:2")})
    again = ControlPlaneOptions.model_validate_json(options.model_dump_json())
    assert again == options
    assert again.http_host == "127.0.0.1" and again.warm_pool == {"torch": 1, "vllm": 1}
    assert again.state_dir == str(tmp_path.resolve()) and again.node_types[0].max_workers == 2


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"tls_cert": "/c.pem"}, "--tls-key"),
        ({"public_url": "gpu.example.com"}, "http:// or https://"),
        ({"callback_allow": ["10.0.0.0/33"]}, "10.0.0.0/33"),
        ({"warm_pool": "torch=-1"}, "warm pool"),
        ({"http_port": 70000}, "less than or equal to 65535"),
        ({"surprise": 1}, "Extra inputs"),
        ({"body_timeout_s": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_options_are_refused_naming_the_problem(settings, message):
    with pytest.raises(ValidationError, match=message):
        ControlPlaneOptions(state_dir="/tmp/x", **settings)
