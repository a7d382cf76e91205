"""Experiments on top of the library: ``make demo``, ``make reproduce``, the research sweeps.

Outside the installed package: run from the repository root (``python -m experiments.…``; the Makefile and
the tests do so). They import ``clicooper``; nothing in ``clicooper`` imports them, and the wheel leaves
them out.

* :mod:`~experiments.demo` — ``make demo``: train with the default preset, then the attack report;
* :mod:`~experiments.reproduce` — ``make reproduce``: headline attack figures over seeds;
* :mod:`~experiments.research` — the sweeps (privacy frontier, label DP, accuracy, verify cost, malicious
  trainers) and the fuzz campaigns on inputs and on the wire.

The benchmarks are their own top-level package, :mod:`benchmarks` (``make bench``); the wide-area test bed
is :mod:`testbed`.
"""
