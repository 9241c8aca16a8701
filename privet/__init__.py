"""Privet: federated training with differential privacy, on Flower and Opacus.

One import namespace: the design's top-level folders (server/, client/, privacy/, simulations/,
task/) are the subpackages privet.server, privet.client, ... An installed Privet has them inside
this package (pyproject.toml maps them). Run from a source tree (a checkout, or the Flower app
bundle a SuperNode unpacks) they are this folder's siblings, so the tree's root joins this
package's search path: privet.server is then the tree's server/, never another installed copy.
"""

from importlib import metadata
from pathlib import Path

SUBPACKAGES = ("client", "privacy", "server", "simulations", "task")
"""The design's top-level folders that are subpackages of privet."""

_tree_root = Path(__file__).resolve().parent.parent
if not (Path(__file__).resolve().parent / "server").is_dir() and all(
    (_tree_root / name / "__init__.py").is_file() for name in SUBPACKAGES
):
    __path__.append(str(_tree_root))  # noqa: F821 (a package's search path)

try:
    __version__ = metadata.version("privet")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["SUBPACKAGES", "__version__"]
