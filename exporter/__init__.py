"""infermeter: a Prometheus exporter for GPU nodes that serve large language models."""

__version__ = "0.1.0"
