"""moesif-flush: drain the moesifasgi queue to Moesif (flusher, client, CLI)."""
