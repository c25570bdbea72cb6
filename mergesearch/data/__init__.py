"""Datasets on disk: the Parquet schema, de-duplication, near-duplicate splits, the dataset card, and a
split read into the evaluation data a search scores on. Making data is ``mergesearch.datagen``."""
