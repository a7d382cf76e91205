"""Benchmarks (``make bench``); each module is a ``python -m`` entry printing its figures.

* :mod:`~clicooper.experiments.bench.inprocess` — centralized vs in-process split training throughput;
* :mod:`~clicooper.experiments.bench.transport` — gRPC round trips of one tensor and the serde share;
* :mod:`~clicooper.experiments.bench.nodes` — whole nodes over gRPC vs in-process, pipelining;
* :mod:`~clicooper.experiments.bench.noise` — the keyed activation noise against a training step;
* :mod:`~clicooper.experiments.bench.loopback` — :func:`loopback_mesh`, started transports on 127.0.0.1.
"""
