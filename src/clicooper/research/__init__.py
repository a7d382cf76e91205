"""Research sweeps (issue 5: the privacy frontier)."""
