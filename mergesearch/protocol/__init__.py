"""The paper's reproduction protocol (Hammoud et al. 2024, Table 1) as one resumable command.

``mergesearch reproduce PROTOCOL`` scores, on a dataset's held-out split, every row of the table: the
experts alone; equal-weight and grid-searched TIES, DARE-TIES and SLERP (the data-free baselines);
evolutionary searches with task data only, with task + alignment data, and with the paper's loss proxy;
LM-Cocktail with and without alignment data at two temperatures. Each (row, seed) is one JSON file in
the protocol's folder, written when it finishes: a re-run skips finished cells, so a long table is built
up over several runs.
"""
