"""Research sweeps (``python -m experiments.research.<name>``): the privacy frontier, label DP, accuracy probe,
verify cost, malicious-trainer detection, and the fuzz campaigns on inputs and on the wire."""
