"""The DO's defences as mechanisms: one small protocol (:mod:`.base`), one class per kind (:mod:`.builtin`),
and the registry from ``kind`` to class (:mod:`.registry`, which also finds third-party defences through the
``clicooper.defenses`` entry points). The specs they are built from live in :mod:`clicooper.config.defenses`.
"""
