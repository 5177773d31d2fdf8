"""What a cluster can run: its live nodes and the node types its autoscaler can launch, whether a
replica's resource request fits one of them, and which node type a waiting replica needs. No Ray.

A GPU pool that scales from zero has no live node, so its accelerator is in no live node's
resources: deploy-time checks read the autoscaler's node types as well (`node_types_from_config`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from deployments.spec import parse_gpu

ACCELERATOR_PREFIX = "accelerator_type:"
# Ray's `accelerator_type=` actor option asks for this much of the node's accelerator resource.
ACCELERATOR_SLIVER = 0.001
MEMORY = "memory"


class NodeType(BaseModel):
    """One node type of the autoscaler's configuration (`available_node_types` of a cluster YAML)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    resources: dict[str, float] = Field(default_factory=dict)
    min_workers: int = Field(default=0, ge=0)
    max_workers: int = Field(default=0, ge=0)

    @property
    def accelerator(self) -> str | None:
        return next(
            (k.removeprefix(ACCELERATOR_PREFIX) for k in self.resources if k.startswith(ACCELERATOR_PREFIX)), None
        )

    def describe(self) -> str:
        gpus = int(self.resources.get("GPU", 0))
        offers = [f"{gpus}x {self.accelerator or 'GPU'}" if gpus else "no GPU"]
        if "CPU" in self.resources:
            offers.append(f"{self.resources['CPU']:g} CPU")
        if MEMORY in self.resources:
            offers.append(f"{self.resources[MEMORY] / 2**30:.0f} GiB")
        return f"{self.name} ({', '.join(offers)}, up to {self.max_workers} node(s))"


@dataclass(frozen=True)
class ReplicaRequest:
    """The resources one replica asks Ray for. `accelerators`: any one of these types will do
    (in order of preference); empty means any GPU, or none when `gpus` is 0."""

    cpus: float = 1.0
    gpus: int = 0
    accelerators: tuple[str, ...] = ()
    memory_bytes: int | None = None
    custom: tuple[tuple[str, float], ...] = ()

    def resources(self, accelerator: str | None) -> dict[str, float]:
        """The Ray resource dict this request becomes with `accelerator` chosen."""
        out: dict[str, float] = {"CPU": self.cpus}
        if self.gpus:
            out["GPU"] = float(self.gpus)
        if accelerator:
            out[ACCELERATOR_PREFIX + accelerator] = ACCELERATOR_SLIVER
        if self.memory_bytes:
            out[MEMORY] = float(self.memory_bytes)
        for name, amount in self.custom:
            out[name] = amount
        return out

    def describe(self) -> str:
        parts = []
        if self.gpus:
            parts.append(f"{self.gpus}x {'|'.join(self.accelerators) or 'any GPU'}")
        parts.append(f"{self.cpus:g} CPU")
        if self.memory_bytes:
            parts.append(f"{self.memory_bytes / 2**20:.0f} MiB memory")
        return ", ".join(parts)


@dataclass(frozen=True)
class Placement:
    """Where a request can run: the accelerator chosen, and the node type the autoscaler would
    launch for it (None when a live node can already hold it)."""

    accelerator: str | None
    node_type: str | None


class CapacityError(ValueError):
    """No live node and no launchable node type can hold the request."""


def fits(capacity: Mapping[str, float], wanted: Mapping[str, float], *, declared_only: bool = False) -> bool:
    """Whether a node with `capacity` (total resources) can hold `wanted`. With `declared_only`
    (an autoscaler node type), CPU and memory a node type leaves undeclared count as fitting: the
    cloud provider fills them in from the instance type at launch."""
    for name, amount in wanted.items():
        if amount <= 0:
            continue
        if name not in capacity and declared_only and name in ("CPU", MEMORY):
            continue
        if capacity.get(name, 0.0) + 1e-9 < amount:
            return False
    return True


def node_types_from_config(config: Mapping[str, object]) -> list[NodeType]:
    """The worker node types of an autoscaler configuration (the head type is a live node, never launched)."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    if not isinstance(types, Mapping):
        raise ValueError("available_node_types must be a mapping of node type name to its settings")
    out = []
    for name, settings in types.items():
        if name == head or not isinstance(settings, Mapping):
            continue
        out.append(NodeType.model_validate({"name": name, **settings}))
    return out


def place(
    request: ReplicaRequest, live_nodes: Iterable[Mapping[str, float]], node_types: Iterable[NodeType]
) -> Placement:
    """The accelerator and node type a request runs on: a live node that can hold it first, then a
    node type the autoscaler may launch (max_workers > 0), trying `request.accelerators` in order.
    CapacityError (listing what each node type offers) when nothing can."""
    live = [dict(n) for n in live_nodes]
    launchable = [t for t in node_types if t.max_workers > 0]
    choices: list[str | None] = list(request.accelerators) or [None]
    for accelerator in choices:
        wanted = request.resources(accelerator)
        if any(fits(node, wanted) for node in live):
            return Placement(accelerator, None)
        for node_type in launchable:
            if fits(node_type.resources, wanted, declared_only=True):
                return Placement(accelerator, node_type.name)
    raise CapacityError(
        f"asks for {request.describe()}, which no node can hold; live nodes: "
        f"{describe_live(live)}; node types the autoscaler can launch: "
        f"{'; '.join(t.describe() for t in launchable) or 'none'}"
    )


def node_type_for(wanted: Mapping[str, float], node_types: Iterable[NodeType]) -> str | None:
    """The first launchable node type that can hold a pending replica's resources, if any."""
    return next(
        (t.name for t in node_types if t.max_workers > 0 and fits(t.resources, wanted, declared_only=True)), None
    )


def describe_live(nodes: list[dict[str, float]]) -> str:
    if not nodes:
        return "none"
    parts = []
    for node in nodes:
        gpus = int(node.get("GPU", 0))
        accelerator = next((k.removeprefix(ACCELERATOR_PREFIX) for k in node if k.startswith(ACCELERATOR_PREFIX)), None)
        parts.append(f"{gpus}x {accelerator or 'GPU'}" if gpus else f"{node.get('CPU', 0):g} CPU")
    return ", ".join(parts)


FAKE_NODE_CPUS = 4


def parse_fake_nodes(text: str) -> list[NodeType]:
    """`A10G:2,L4:1:2` → node types `fake_a10g` (1x A10G per node, up to 2 nodes) and `fake_l4`
    (2x L4 per node, up to 1 node) for Ray's fake multi-node provider: TYPE:MAX_NODES[:GPUS_PER_NODE].
    Each fake node also offers FAKE_NODE_CPUS logical CPUs per GPU."""
    types: dict[str, NodeType] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, *numbers = part.split(":")
        if not 1 <= len(numbers) <= 2 or not all(n.strip().isdigit() and 1 <= int(n) <= 64 for n in numbers):
            raise ValueError(
                f"fake node pool {part!r} must be TYPE:MAX_NODES or TYPE:MAX_NODES:GPUS_PER_NODE "
                "(whole numbers 1-64), e.g. A10G:2 or L4:1:2"
            )
        count = int(numbers[0])
        gpus = int(numbers[1]) if len(numbers) == 2 else 1
        request = parse_gpu(name.strip())
        accelerator = request.types[0] if request and request.types else None
        if accelerator is None:
            raise ValueError(f"fake node pool {part!r} must name a GPU type, e.g. A10G:2")
        node_type = f"fake_{accelerator.lower()}"
        if node_type in types:
            raise ValueError(f"fake node pool {accelerator} is given twice")
        types[node_type] = NodeType(
            name=node_type,
            resources={"CPU": FAKE_NODE_CPUS * gpus, "GPU": gpus, ACCELERATOR_PREFIX + accelerator: gpus},
            min_workers=0,
            max_workers=count,
        )
    if not types:
        raise ValueError("--fake-nodes needs at least one TYPE:MAX_NODES, e.g. A10G:2,L4:1:2")
    return list(types.values())
