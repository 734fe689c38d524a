"""Retrieval for APT (``retriever.bm25``, ``retriever.dense``) and the ``apt index`` command.

Importing this package is cheap (no numpy, no torch): the providers live in
:mod:`apt_plugin_retriever.provider` and import the index code when built.
"""

__version__ = "1.0.0"
