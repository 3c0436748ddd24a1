"""The Streamlit viewer and the static HTML export.

``neuroscope view DIR`` runs ``viewer/app.py`` (``viewer.launch``); ``neuroscope export-html DIR
OUT`` writes a static site (``viewer.export``). Data access lives in ``viewer.data`` and HTML
building in ``viewer.render``, both free of Streamlit, so the app, the export and the timing
script share them. Corpus text is untrusted: every token string is escaped in ``viewer.render``.

Layer rule: imports only indexer.api, indexer.store, indexer.errors (and indexer.config); never
torch, so a page opens without loading a model.
"""
