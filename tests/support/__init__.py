"""Test scaffolding (not shipped): toy parties, raw gRPC clients, fuzz strategies.

Importable as ``support`` from the tests (pytest puts ``tests/`` on ``sys.path``: it has no ``__init__.py``).
"""
