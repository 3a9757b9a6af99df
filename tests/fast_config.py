"""Small options for every check: the whole battery on the tiny pattern model in seconds."""

FAST_CONFIG = """
[audit]
batch_size = 8

[checks.adversarial]
budget = "fast"
max_samples = 24
epsilons = {linf = [0.01, 0.03, 0.1], l2 = [0.3, 1.0]}
fmn_steps = 10
apgd_steps = 5
square_queries = 10

[checks.fooling]
methods = ["gradient", "evolution_direct"]
steps = 15
queries_per_class = 60
garbage_samples = 4

[checks.class_viz]
steps = 12
batch_size = 2

[checks.attribution]
per_class = 1
mistakes = 2
sanity_images = 2
randomization_layers = 2
faithfulness_images = 2
ig_steps = 4
smoothgrad_samples = 2

[checks.bias]
runs = 3
max_per_class = 6
random_pool = 12
max_base = 8
"""


def fast_config_dict() -> dict:
    """FAST_CONFIG parsed (a dict for ``run_audit(config=...)``)."""
    import tomllib

    return tomllib.loads(FAST_CONFIG)
