"""Role Injector: keep a model's role in files, fit it exactly into a token budget, wrap it for the model."""

__version__ = "0.1.0"
