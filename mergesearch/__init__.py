"""mergesearch: search for merges of expert LLMs that keep every expert's skill and stay aligned."""

__version__ = "0.1.0"
