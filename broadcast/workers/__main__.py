"""`python -m broadcast.workers CONTROL_FD PACKETS_FD`: a worker process, started by
the main process only. A module of its own, so that worker.py is imported under its own
name (its logger and pickled classes are `broadcast.workers.worker`, not `__main__`)."""

from broadcast.workers.worker import main

main()
