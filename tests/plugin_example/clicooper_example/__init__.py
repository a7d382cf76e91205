"""Example CliCooper plug-in: one defence (``release-quantize``) and one attack (``norm-bins``)."""
