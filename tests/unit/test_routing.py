"""The gateway's routing table on in-process snapshots: paths to units, auth, methods, OpenAPI."""

import hashlib

import pytest
from pydantic import BaseModel

from deployments.gateway.routing import RouteError, RoutingTable, path_parts
from deployments.kinds import kind_of
from deployments.spec import DeployedFunction, FunctionSpec, TorchModelSpec, VllmModelSpec


def add(a: int, b: int = 1) -> int:
    """Add two integers."""
    return a + b


class Item(BaseModel):
    sku: str
    qty: int = 1


class Order(BaseModel):
    items: list[Item]
    gift: Item | None = None


def place(order: Order, rush: bool = False) -> Order:
    return order


class Counter:
    def incr(self, by: int = 1) -> int:
        return by


def deployed(app: str, spec: FunctionSpec, code=None) -> dict:
    routes = kind_of(spec).routes(app, spec, code)
    return DeployedFunction(spec=spec, serve_app=f"raygpu-app-{app}", deployment=spec.name, routes=routes).model_dump(
        mode="json"
    )


def table(tokens: dict[str, list[str]] | None = None, protected: list[str] | None = None) -> RoutingTable:
    units = [
        deployed("shop", FunctionSpec(name="add"), add),
        deployed("shop", FunctionSpec(name="Counter", kind="class", methods=["incr"]), Counter),
        deployed("shop", FunctionSpec(name="ranker", kind="torch", torch_model=TorchModelSpec(weights={"a": "/w"}))),
        deployed("shop", FunctionSpec(name="chat", kind="vllm", vllm_model=VllmModelSpec(model="/m"))),
    ]
    hashes = {app: [hashlib.sha256(t.encode()).hexdigest() for t in ts] for app, ts in (tokens or {}).items()}
    return RoutingTable(
        {
            "generation": 7,
            "apps": {"shop": {"name": "shop", "version": 3, "functions": units}},
            "token_hashes": hashes,
            "protected": protected if protected is not None else sorted(hashes),
        }
    )


def refused(fn, *args) -> RouteError:
    with pytest.raises(RouteError) as caught:
        fn(*args)
    return caught.value


def test_paths_name_units_and_methods():
    t = table()
    assert t.route("shop", path_parts("/shop/add"), "POST").target is None
    route = t.route("shop", path_parts("/shop/Counter/incr/"), "POST")
    assert route.deployed.spec.name == "Counter" and route.target == "incr"
    chat = t.route("shop", path_parts("/shop/chat/v1/chat/completions"), "POST")
    assert chat.kind.forwards_http and chat.target == "/v1/chat/completions"
    assert t.route("shop", path_parts("/shop/chat/v1/models"), "GET").target == "/v1/models"


def test_unknown_paths_are_404_naming_what_exists():
    t = table()
    assert "not deployed" in refused(t.app_of, ["nope", "add"]).message
    assert refused(t.app_of, []).status == 404
    error = refused(t.route, "shop", ["shop", "nope"], "POST")
    assert error.status == 404 and "add" in error.message and "Counter" in error.message
    assert "no method 'nope'" in refused(t.route, "shop", ["shop", "Counter", "nope"], "POST").message
    assert "methods: incr" in refused(t.route, "shop", ["shop", "Counter"], "POST").message
    assert "call POST /shop/add" in refused(t.route, "shop", ["shop", "add", "extra"], "POST").message
    assert "(torch)" in refused(t.route, "shop", ["shop", "ranker", "extra"], "POST").message
    assert "/v1/" in refused(t.route, "shop", ["shop", "chat", "completions"], "POST").message
    assert refused(t.route, "shop", ["shop"], "POST").status == 404


def test_an_app_that_is_not_deployed_answers_as_a_protected_one_does_to_a_caller_without_a_token():
    guarded = table(protected=["shop"], tokens={"shop": ["rgt_good"]})
    closed = table(protected=["shop"])
    unknown = refused(guarded.app_of, ["nowhere", "add"])
    for answer in (guarded.unauthorized("nowhere"), closed.unauthorized("nowhere")):
        assert (answer.status, answer.error_type, answer.message, answer.headers) == (
            unknown.status,
            unknown.error_type,
            unknown.message,
            unknown.headers,
        )
    assert unknown.status == 401 and unknown.headers == {"WWW-Authenticate": "Bearer"}
    shop = guarded.unauthorized("shop")
    assert shop.message == closed.unauthorized("shop").message  # whether it has tokens does not show either
    assert len(refused(guarded.app_of, ["x" * 5000]).message) < 400


def test_wrong_http_methods_are_405_with_allow():
    t = table()
    error = refused(t.route, "shop", ["shop", "add"], "GET")
    assert error.status == 405 and error.headers == {"Allow": "POST"}
    error = refused(t.route, "shop", ["shop", "chat", "v1", "models"], "DELETE")
    assert error.status == 405 and error.headers == {"Allow": "GET, POST"}


def test_tokens_guard_an_app_that_has_them():
    open_table = table()
    assert open_table.authorized("shop", "")
    guarded = table({"shop": ["rgt_good"]})
    assert guarded.authorized("shop", "Bearer rgt_good") and guarded.authorized("shop", "bearer  rgt_good ")
    for header in ("", "Bearer", "Bearer ", "Bearer rgt_bad", "Basic rgt_good", "rgt_good"):
        assert not guarded.authorized("shop", header), header


def test_a_protected_app_without_active_tokens_lets_nobody_in():
    revoked = table(protected=["shop"])
    for header in ("", "Bearer rgt_good", "Bearer rgt_anything"):
        assert not revoked.authorized("shop", header), header
    error = revoked.unauthorized("shop")
    assert error.status == 401 and "token create shop" in error.message
    assert revoked.openapi("shop")["security"] == [{"bearerAuth": []}]
    assert "security" not in table().openapi("shop")


def test_openapi_lists_every_route_with_its_schemas():
    doc = table({"shop": ["t"]}).openapi("shop")
    assert doc["info"]["version"] == "3" and doc["security"] == [{"bearerAuth": []}]
    add_op = doc["paths"]["/shop/add"]["post"]
    schema = add_op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["a"] and add_op["summary"] == "Add two integers."
    assert "/shop/Counter/incr" in doc["paths"]
    assert "404" in doc["paths"]["/shop/ranker"]["post"]["responses"]  # unknown model
    assert set(doc["paths"]["/shop/chat/v1/models"]) == {"get"}
    assert set(doc["paths"]["/shop/chat/v1/chat/completions"]) == {"post"}
    assert "security" not in table().openapi("shop")


def refs_in(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs_in(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs_in(v)]
    return []


def test_every_ref_in_the_openapi_document_resolves():
    units = [deployed("shop", FunctionSpec(name="place"), place), deployed("shop", FunctionSpec(name="add"), add)]
    doc = RoutingTable(
        {
            "generation": 1,
            "apps": {"shop": {"name": "shop", "version": 1, "functions": units}},
            "token_hashes": {},
            "protected": [],
        }
    ).openapi("shop")
    refs = refs_in(doc)
    assert refs and "$defs" not in str(doc)
    for ref in refs:
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict) and node.get("type") == "object", ref
    assert set(doc["components"]["schemas"]) >= {"Item", "Order"}


def test_spawn_paths_name_a_function_or_method_and_engine_paths_stay_the_engines():
    t = table()
    route = t.spawn_route("shop", path_parts("/shop/add/spawn"), "POST")
    assert route is not None and route.deployed.spec.name == "add" and route.target is None
    route = t.spawn_route("shop", path_parts("/shop/Counter/incr/spawn"), "POST")
    assert route is not None and route.target == "incr"
    assert t.spawn_route("shop", path_parts("/shop/add"), "POST") is None
    assert t.spawn_route("shop", path_parts("/shop/chat/v1/spawn"), "POST") is None  # the engine's own path
    with pytest.raises(RouteError) as wrong_method:
        t.spawn_route("shop", path_parts("/shop/add/spawn"), "GET")
    assert wrong_method.value.status == 405 and wrong_method.value.headers == {"Allow": "POST"}
    with pytest.raises(RouteError) as unknown_method:
        t.spawn_route("shop", path_parts("/shop/Counter/nope/spawn"), "POST")
    assert unknown_method.value.status == 404


def test_a_generator_is_streamed_not_spawned():
    streaming = deployed("feed", FunctionSpec(name="tail", generators=["tail"], parameters={"tail": ["n"]}), add)
    t = RoutingTable(
        {
            "generation": 1,
            "apps": {"feed": {"version": 1, "functions": [streaming]}},
            "token_hashes": {},
            "protected": [],
        }
    )
    with pytest.raises(RouteError) as refused:
        t.spawn_route("feed", path_parts("/feed/tail/spawn"), "POST")
    assert refused.value.status == 400 and refused.value.error_type == "GeneratorFunction"
    with pytest.raises(ValueError, match="does not define"):
        FunctionSpec(name="tail", generators=["other"])


def test_a_new_table_reuses_the_parsed_functions_of_apps_whose_version_did_not_move():
    def raw(generation: int, shop_version: int) -> dict:
        entry = {"spec": {"name": "add"}, "deployment": "add", "serve_app": f"raygpu-app-shop--v{shop_version}"}
        other = {"spec": {"name": "mul"}, "deployment": "mul", "serve_app": "raygpu-app-calc--v1"}
        return {
            "generation": generation,
            "apps": {
                "shop": {"name": "shop", "version": shop_version, "functions": [entry]},
                "calc": {"name": "calc", "version": 1, "functions": [other]},
            },
            "token_hashes": {},
            "protected": [],
        }

    first = RoutingTable(raw(1, 1))
    same = RoutingTable(raw(2, 1), previous=first)
    moved = RoutingTable(raw(3, 2), previous=same)
    assert same.functions[("shop", "add")] is first.functions[("shop", "add")]
    assert moved.functions[("shop", "add")] is not first.functions[("shop", "add")]
    assert moved.functions[("shop", "add")].serve_app == "raygpu-app-shop--v2"
    assert moved.functions[("calc", "mul")] is first.functions[("calc", "mul")]
