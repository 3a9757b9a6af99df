"""The tool's version (recorded in every results.json and checkpoint fingerprint)."""
__version__ = "0.1.0"
