"""The entry points of metaopt's experiments: thin scripts that parse a config, build library
objects and call library functions (``metaopt train`` runs ``scripts.meta_train.main``).

A package, so the scripts import each other as ``scripts.<module>`` and never edit ``sys.path``.
Run one as ``python -m scripts.meta_train ...`` from the checkout, as
``python scripts/meta_train.py ...`` after ``pip install -e .`` (``make setup``), or through the
``metaopt`` command.
"""
