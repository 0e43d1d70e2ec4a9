"""The engine: user store, recall, re-ranking wiring, configuration.

``Engine`` and ``build_index`` live in :mod:`recsieve.engine.engine`; ``EngineConfig`` in
:mod:`recsieve.engine.config`. They are re-exported from :mod:`recsieve`.
"""
