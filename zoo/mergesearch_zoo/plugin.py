"""What the zoo adds to the plug-in families: its model schemes and the toy-language data generator."""

from mergesearch_zoo import data_generator, schemes

__all__ = ["data_generator", "schemes"]
