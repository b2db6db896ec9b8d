"""The cluster: several servers sharing one audience, coordinated through Redis.

`membership.py` keeps this node in the cluster (heartbeats, stream ownership, the other
nodes' load); `placement.py` decides where a viewer is served. Nothing here touches
media: an edge pulls a stream from its origin over WHEP (`ingest/origin_pull.py`) and
fans it out like any local source.
"""
