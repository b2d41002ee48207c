"""Shipped YAML configs (installed as ``svlm.configs``): ``importlib.resources.files("svlm.configs")``."""
