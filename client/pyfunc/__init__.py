"""steppe.pyfunc: the generic python_function model flavor, MLflow-compatible."""
