"""The ``fooling`` check (Nguyen, Yosinski & Clune 2015): fooling images per target class and
garbage-in confidence. Importing the package registers the check.

Modules, each depending only on those below it: ``check`` (the check: options, units,
records, summary) -> ``report`` (metrics, findings, data) -> ``figures`` (PNGs) and
``methods`` (the registry of fooling methods) -> ``search`` (gradient ascent, MAP-Elites),
``cppn`` (genome encodings), ``garbage`` (garbage inputs).
"""
from .check import FoolingCheck
from .methods import FoolingMethod, register_method, registered_methods

__all__ = ["FoolingCheck", "FoolingMethod", "register_method", "registered_methods"]
