"""neuroscope: a dataset-example indexer for the neurons and attention heads of transformers.

Heavy dependencies (torch, TransformerLens) are imported lazily by the modules that need
them, so `neuroscope --help` and the viewer start fast.
"""

__version__ = "0.1.0"
