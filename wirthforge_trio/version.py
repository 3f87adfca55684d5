"""The server's version, in one place: a leaf module that imports nothing, so every layer can
read it without importing the package's lazy facade (docs/decisions.md, "Layers")."""

from __future__ import annotations

__version__ = "0.1.0"
