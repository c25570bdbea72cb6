"""mergesearch-zoo: the offline models the demo, the tests and the benchmarks run on.

Not part of the product: it plugs into mergesearch through entry points (``zoo/pyproject.toml``): model and
dataset schemes and the ``template`` data generator (``plugin``), the ``zoo`` and ``demo`` commands
(``cli``). mergesearch never imports it (an import-linter contract).
"""
