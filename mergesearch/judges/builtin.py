"""The built-in judges (``refusal``, ``llama_guard``): the ``judges`` entry point of ``mergesearch.plugins``.

Importing this module registers them in ``mergesearch.registry.JUDGES``.
"""

from mergesearch.judges import llama_guard, refusal

__all__ = ["llama_guard", "refusal"]
