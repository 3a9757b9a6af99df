"""The ``adversarial`` check (docs/adversarial.md), one module per layer, imported one way:

``check`` (the Check: units, compute, summarize) → ``summary`` (merged records → metrics,
findings, per-sample table, published examples) and ``figures`` (images) → ``engine`` (the ε
loop on one work unit, its records) → ``plan`` (what is attacked, decided once), ``options``
→ ``budget`` (fast / standard / thorough) and the attacks: ``apgd`` (APGD-CE/-DLR/-T),
``square`` (Square) → ``attacks`` (base classes, the registry :data:`ATTACKS`, FGSM, PGD, FMN,
noise) → ``objective`` (the logit margin) and ``threat`` (norms, geometry, ε grids).

Importing this package registers the check.
"""
from .attacks import ATTACKS, register_attack
from .check import AdversarialCheck
from .options import AdversarialOptions
from .threat import default_epsilons, fmt_eps, max_epsilon

__all__ = ["AdversarialCheck", "AdversarialOptions", "ATTACKS", "register_attack", "default_epsilons", "fmt_eps",
           "max_epsilon"]
