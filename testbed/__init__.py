"""The wide-area test bed (tests and ``make bench-wan``): network namespaces, shaped veth links, relays.

* :mod:`~testbed.netns` — :class:`~testbed.netns.WanBed`: one namespace per party, veth
  pairs with ``tbf``, one relay per namespace; profiles (``lan``, ``wan``, ``poor``); why a bed cannot be
  made here (:func:`~testbed.netns.netns_unavailable`);
* :mod:`~testbed.relay` — the user-space TCP relay (latency, jitter, stalls, resets, byte counts;
  standard library only, run as its own process).

Outside the installed package (import it from the repository root): nothing in ``clicooper`` imports it; it is
a harness around ``launch_local`` (a ``placement``).
"""
