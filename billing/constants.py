"""Names of the meter actor, apart from its code: replicas and the CLI find it by these without
importing the meter (its ledger, price table and Prometheus exporter)."""

METER_ACTOR_NAME = "raygpu-meter"
METER_NAMESPACE = "raygpu"
