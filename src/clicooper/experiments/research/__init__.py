"""Research sweeps (issue 5: the privacy frontier): frontier, label DP, accuracy probe, verify cost."""
