from .check import BiasCheck
