"""Rehearsals: a user's job checked against their real model folders and cluster, then run end to end on
architecture-true stand-ins of those models (``mergesearch rehearse``)."""
