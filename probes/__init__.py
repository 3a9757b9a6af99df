"""Checks that look inside the model: class visualization, attribution maps, bias/concept probes."""
