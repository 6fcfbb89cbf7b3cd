"""Leaf helpers for training loops: batching, losses, optimisation, metric logging, manifests."""
