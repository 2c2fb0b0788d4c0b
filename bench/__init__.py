"""The isol8 benchmark suite: ``python bench/run.py`` (see bench/README.md)."""
