"""HyperSDK: incremental VM disk export driven by changed block tracking."""

__version__ = "0.1.0"
