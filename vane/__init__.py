"""vane: a flow-based reverse proxy (see README.md)."""

__version__ = "0.1.0"
