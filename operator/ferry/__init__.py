"""Ferry: a Kubernetes operator for Kafka data integration."""

__version__ = "0.1.0"
