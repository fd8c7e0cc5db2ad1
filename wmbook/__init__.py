"""wmbook: the support package of *World Models, a reproducible notebook book*."""

__version__ = "0.1.0"
