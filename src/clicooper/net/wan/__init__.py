"""The wide-area test bed (tests and ``make bench-wan``): network namespaces, shaped veth links, relays.

* :mod:`~clicooper.net.wan.netns` — :class:`~clicooper.net.wan.netns.WanBed`: one namespace per party, veth
  pairs with ``tbf``, one relay per namespace; profiles (``lan``, ``wan``, ``poor``); why a bed cannot be
  made here (:func:`~clicooper.net.wan.netns.netns_unavailable`);
* :mod:`~clicooper.net.wan.relay` — the user-space TCP relay (latency, jitter, stalls, resets, byte counts;
  standard library only, run as its own process).

Nothing in the library imports this package: it is a harness around ``launch_local`` (a ``placement``).
"""
