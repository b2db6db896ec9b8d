"""What a stream looked like, kept off the hot path: snapshots (and, later, recording)."""
