"""The ``class_viz`` check (activation maximization, Olah et al. 2017). Importing the package
registers the check.

Modules, each depending only on those below it: ``check`` (the check: options, units,
records, summary) -> ``figures`` (PNGs) and ``optimize`` (:func:`visualize`) -> ``param``
(Fourier image, random views).
"""
from .check import ClassVizCheck

__all__ = ["ClassVizCheck"]
