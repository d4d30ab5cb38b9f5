"""Ingest (files, directories, hub ids), pair construction and the synthetic default data set."""

from .ingest import DataError, Pairs, SplitData, load_split, merge_splits, trace_key

__all__ = ["DataError", "Pairs", "SplitData", "load_split", "merge_splits", "trace_key"]
