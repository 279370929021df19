"""Scale-out on NATS JetStream: readings partitioned on the device, writers as one consumer
group, inference replicas owning partitions through leases (docs/scale.md).

Nothing here runs unless ``nats.url`` is set; the single-gateway path does not import it.
"""
