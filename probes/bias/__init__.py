"""The ``bias`` check (registered on import): does a class lean on a concept it should not?
Layout, dependencies one way:

* :mod:`.check` - the check: options, work units, summary;
* :mod:`.summary` and :mod:`.figures` - metrics/findings and pictures from the records;
* :mod:`.plan` - the concept sets, layers and every random choice of a run;
* :mod:`.tcav` (CAVs, TCAV scores, one layer's work unit), :mod:`.insertion` (counterfactual
  concept pasting), :mod:`.concepts` (loading concept sets), :mod:`.layers` (which layers).
"""
from .check import BiasCheck

__all__ = ["BiasCheck"]
