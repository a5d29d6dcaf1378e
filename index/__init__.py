"""Image library used by the stages: decoding, descriptors, matching,
the SQLite store and the FAISS index. It knows no transport and imports
nothing from ``broker``, ``stages`` or ``http_api``."""
