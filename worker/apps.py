from django.apps import AppConfig


class WorkerConfig(AppConfig):
    """Registered for its management commands (serve, build_images); loading it imports no engine code."""

    name = "worker"
