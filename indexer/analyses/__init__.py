"""Analyses on a finished index: minimal examples, regex checks, trigram and base64 neurons,
flags, logit effects, head wiki.

Layer rule: imports ``indexer.store``, ``indexer.inputs``, ``indexer.forward`` (and config,
errors).
"""
