"""Training orchestration: builds parties over a transport and runs rounds."""
