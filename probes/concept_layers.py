"""Moved to :mod:`probes.layers`; this re-export keeps ``probes/class_viz.py`` (and its test)
importing until they import :mod:`probes.layers` directly."""
from .layers import capture, conv_layers, default_layers, hookable, last_conv, resolve_layers  # noqa: F401
