"""The one session core that both the in-process ``train`` and ``clicooper node`` drive.

- :mod:`.setup` — a run's resolved config and its model blueprint, computed once; the device;
- :mod:`.privacy` — the DO's privacy mechanisms for the run (one typed record);
- :mod:`.builder` — the one party builder (the DO or a trainer, over the blueprint);
- :mod:`.checkpoint` — round checkpoints, model files and ``state.json``;
- :mod:`.rounds` — one round's steps over any transport, and its metrics;
- :mod:`.budget` — the ε budget stop (``--max-epsilon``).

The transports and the processes differ (``clicooper.training`` in one process, ``clicooper.net`` one
process per party); nothing else does.
"""
