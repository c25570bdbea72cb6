"""Data generation: harmful prompts over the harm taxonomy and domain questions written by a generator (or
imported from public prompt sets), answered by the experts, selected by a judge, written as a dataset.

Apart from ``mergesearch.data``, which reads and splits datasets on disk: a search needs only that, and
data generation needs models, backends and judges."""
