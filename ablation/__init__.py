"""Houlsby adapter analysis: adapters, offline models and data, train-once store, shared ablation evaluation."""
