"""Experiments on top of the library: ``make demo``, ``make reproduce``, the research sweeps, the benchmarks.

The top layer: tests, the Makefile and users run these modules (``python -m clicooper.experiments.…``);
nothing else in ``clicooper`` imports them.

* :mod:`~clicooper.experiments.demo` — ``make demo``: train with the default preset, then the attack report;
* :mod:`~clicooper.experiments.reproduce` — ``make reproduce``: headline attack figures over seeds;
* :mod:`~clicooper.experiments.research` — the privacy-frontier, label-DP, accuracy and verify-cost sweeps;
* :mod:`~clicooper.experiments.bench` — ``make bench``: in-process, gRPC transport, whole-node and noise timings.
"""
