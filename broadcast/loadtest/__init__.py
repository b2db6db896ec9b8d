"""The load generator, `broadcast loadtest`: light WHEP viewers and their measurements.

run.py joins them and measures a window, viewer.py is one viewer, rtp_stats.py what it
counts of the RTP it gets, report.py the result, server_usage.py what the server spent;
aiortc_internals.py holds every use of aiortc's private attributes.
"""
