"""steppe.projects: run MLflow Projects (MLproject folders and git repositories)."""
