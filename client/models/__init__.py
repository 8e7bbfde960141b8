"""steppe.models: model signatures, input examples and the MLmodel format, MLflow-compatible."""
