"""Worker processes: the media of some viewers on other cores (pool.py: the main
process side; worker.py: a worker; channel.py: the sockets between them)."""
