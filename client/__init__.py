"""steppe: experiment tracking built for throughput, with MLflow's names."""

__version__ = "0.1.0"
