"""Checks that try to break the model: adversarial perturbation, fooling images."""
