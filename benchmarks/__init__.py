"""Benchmarks (``make bench``, ``make bench-wan``); each module is a ``python -m benchmarks.…`` entry, run from
the repository root, printing its figures. Outside the installed package: nothing in ``clicooper`` imports it.

* :mod:`~benchmarks.inprocess` — centralized vs in-process split training throughput;
* :mod:`~benchmarks.transport` — gRPC round trips of one tensor and the serde share;
* :mod:`~benchmarks.nodes` — whole nodes over gRPC vs in-process, pipelining;
* :mod:`~benchmarks.noise` — the keyed activation noise against a training step;
* :mod:`~benchmarks.gpu` — trainers on CUDA against everyone on the CPU (a prepared GPU check);
* :mod:`~benchmarks.wan`, :mod:`~benchmarks.wan_faults` — ``make bench-wan`` on the :mod:`testbed`;
* :mod:`~benchmarks.loopback` — :func:`loopback_mesh`, started transports on 127.0.0.1.
"""
