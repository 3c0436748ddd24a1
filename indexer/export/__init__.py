"""Exports in the formats the field's tools read: Neuronpedia's batch upload and bulk import,
OpenAI automated-interpretability's ``NeuronRecord``, EleutherAI delphi's latent records and
Neuronpedia's HeadVis tree (``neuroscope export DIR OUT --format ...``).

Each format is one module whose docstring names the format's version and source;
``runner.export`` streams the index one (site, layer) at a time, in chunks of features, so
memory does not grow with the index.

Layer rule: imports only ``indexer.store`` and ``indexer.api`` (and config, errors); never torch.
"""
