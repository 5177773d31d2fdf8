"""What runs on the cluster: the shared spec, the kinds of units, the control-plane store, the
gateway, the replicas, the engines and the node services."""
