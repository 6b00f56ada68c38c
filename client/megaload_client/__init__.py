"""Client SDK for the megaload service. Installs with httpx and pydantic only."""

__version__ = "0.1.0"

__all__ = ["__version__"]
