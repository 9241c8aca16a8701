"""Privet: federated training with differential privacy, on Flower and Opacus."""

from importlib import metadata

try:
    __version__ = metadata.version("privet")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["__version__"]
