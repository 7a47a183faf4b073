"""onramp: from a new checkpoint on the Hugging Face Hub to a served, evaluated endpoint."""

__version__ = "0.1.0"
__all__ = ["__version__"]
