"""Datasets: on-disk shard format, procedural datasets, loaders."""
