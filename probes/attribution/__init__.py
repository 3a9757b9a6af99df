"""The ``attribution`` check (registered on import): attribution maps of several methods and
two sanity tests of them. Layout, dependencies one way:

* :mod:`.check` - the check: options, work units, summary;
* :mod:`.summary` and :mod:`.figures` - metrics/findings and pictures from the records;
* :mod:`.engine` - the work units (a method's maps, a randomization-cascade step);
* :mod:`.plan` - the selected images, usable methods and settings of a run;
* :mod:`.methods` - the method registry (one class per file), :mod:`.sanity` (randomization
  cascade, deletion/insertion), :mod:`.hooks` (hook-safe model copies), :mod:`.memory`.
"""
from .check import AttributionCheck

__all__ = ["AttributionCheck"]
