"""Data: ``vlmo prepare`` sources and the prepared-directory store, tokenizer, transforms, collation and loaders.

Submodules are imported on use so that importing :mod:`vlmo_cli.data` stays cheap (no torch, no datasets).
"""
