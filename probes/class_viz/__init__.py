"""The ``class_viz`` check (activation maximization, Olah et al. 2017). Importing the package
registers the check.

Modules, each depending only on those below it: ``check`` (the check: options, units,
records, summary) -> ``figures`` (PNGs) and ``optimize`` (:func:`visualize`) -> ``param``
(Fourier image, random views, thread setting for small work).

``select_classes`` (used by ``bias``) is importable from here.
"""
from .check import ClassVizCheck, select_classes

__all__ = ["ClassVizCheck", "select_classes"]
