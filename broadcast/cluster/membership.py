"""This node's place in the cluster, kept in Redis: who is alive, who owns which stream.

Every `HEARTBEAT_S` a node writes what it is and carries (`NodeInfo`) under a key that
expires after `EXPIRY_S`, so a node that stops writing (killed, cut off) is gone from
the cluster within that time; it also refreshes the ownership keys of the streams it
publishes, which expire alike. Nothing else is kept in Redis: when Redis comes back
empty, each node writes its heartbeat and claims its live streams again.

Redis going away never stops media or local joins: every call here gives up within
`REDIS_TIMEOUT_S`, answers from what it knew, and says so in `redis_up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields

import redis.asyncio as redis
from redis.exceptions import RedisError

from broadcast.config import Config
from broadcast.loadtest.server_usage import process_cpu_s
from broadcast.redact import redact_url

logger = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
# The others are read twice as often as we write: a dead node drops out of our view at
# most this long after its key expired (SIGKILL to gone: 7.0 s with 2 s reads, now ~5-6).
READ_S = 1.0
# A node whose heartbeat has not changed for this long is taken for dead before its key
# expires: no viewer is sent to a killed edge while Redis still holds its last words.
STALE_S = 3.5
# A node using this share of its cores is avoided while others are not.
HOT_CPU_SHARE = 0.8
# Three missed heartbeats: a node this quiet is gone, and its streams are free.
EXPIRY_S = 6
REDIS_TIMEOUT_S = 1.0
PREFIX = "broadcast:"
# Refresh our ownership of a stream, or take it again if the key is gone (Redis came
# back empty); another node's stays theirs. Returns the owner's id.
CLAIM_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
    return ARGV[1]
end
return owner
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class NodeInfo:
    """A node as its last heartbeat described it."""

    id: str
    url: str
    role: str
    viewers: int = 0
    capacity: int = 0  # viewers it takes at most (<limits>); 0: unlimited
    cpu: float = 0.0  # share of one core its processes used over the last interval
    cores: int = 1  # the cores it may run on
    bitrate_out_bps: int = 0
    streams: dict[str, int] = field(default_factory=dict)  # its viewers per stream
    relays: tuple[str, ...] = ()  # the streams it pulls from their owner
    written_at: float = 0.0  # Unix time of the heartbeat

    @property
    def carries_viewers(self) -> bool:
        return self.role != "origin"

    @property
    def full(self) -> bool:
        return bool(self.capacity) and self.viewers >= self.capacity

    @property
    def load(self) -> float:
        """How busy, 0-1 and beyond: the larger of its CPU and its viewers' share of
        its capacity (per core: a node's workers spread over its cores)."""
        share = self.viewers / self.capacity if self.capacity else 0.0
        return max(self.cpu / self.cores, share)

    @property
    def hot(self) -> bool:
        """Its CPU nears what its cores give: avoided while others are not."""
        return self.cpu / self.cores >= HOT_CPU_SHARE

    def carries(self, stream_id: str) -> bool:
        return stream_id in self.streams

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> NodeInfo:
        """A heartbeat, read by what this version knows of it: a newer node's added
        fields are left out (in a rolling upgrade they would fail every read)."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in json.loads(text).items() if k in known}
        data["relays"] = tuple(data.get("relays", ()))
        return cls(**data)


@dataclass(frozen=True)
class LocalState:
    """What this node carries now, for its heartbeat."""

    streams: dict[str, int]  # local viewers per stream carried here
    owned: tuple[str, ...]  # those published here (WHIP, cameras): ours in Redis
    relays: tuple[str, ...]  # those pulled from their owner
    bitrate_out_bps: int


class Membership:
    """This node in the cluster: `start()` joins, `stop()` leaves."""

    def __init__(self, config: Config, local: Callable[[], LocalState]) -> None:
        assert config.cluster_redis is not None and config.node_url is not None
        self.node_id = config.node_name
        self.node_url = config.node_url
        self.role = config.cluster_role
        self.capacity = config.max_viewers_total
        self.redis_url = redact_url(config.cluster_redis)
        self.secret: str | None = config.cluster_secret
        self._shares_secret = config.cluster_secret is None  # kept in Redis
        self.redis_up = False
        self.nodes: dict[str, NodeInfo] = {}  # the others, from their heartbeats
        # When each node's current heartbeat was first read here (our clock, not theirs).
        self._heard: dict[str, tuple[float, float]] = {}
        # Viewers we sent to each node since its last heartbeat: a burst of joins is
        # spread by what we know we sent, not only by figures up to 2 s old.
        self._sent: Counter[str] = Counter()
        self.claimed: set[str] = set()  # streams this node owns
        self._conflicts: set[str] = set()  # ours here, but owned elsewhere: told once
        self._local = local
        self._redis = redis.Redis.from_url(
            config.cluster_redis,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )
        self._task: asyncio.Task[None] | None = None
        # Called after each heartbeat that read the other nodes.
        self.on_heartbeat: Callable[[], None] = lambda: None
        self._cpu = (process_cpu_s(os.getpid()), time.monotonic())
        self.cpu_share = 0.0
        self.heartbeats = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"Membership({self.node_id} via {self.redis_url})"

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Join: the first heartbeat now (a node is usable at once), then every 2 s."""
        await self.heartbeat()
        if not self.redis_up:
            logger.warning(
                "cluster: Redis %s is not reachable; serving locally until it is",
                self.redis_url,
            )
        self._task = asyncio.create_task(self._beat())

    async def stop(self) -> None:
        """Leave: the node and its streams are gone from the cluster at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with self._talking("leave"):
            for stream_id in list(self.claimed):
                await self._redis.eval(
                    RELEASE_SCRIPT, 1, _owner_key(stream_id), self.node_id
                )
            await self._redis.delete(_node_key(self.node_id))
        await self._redis.aclose()

    async def _beat(self) -> None:
        written = time.monotonic()
        while True:
            await asyncio.sleep(READ_S)
            try:
                if time.monotonic() - written >= HEARTBEAT_S - READ_S / 2:
                    written = time.monotonic()
                    await self.heartbeat()
                else:
                    await self.look()
            except Exception:  # a bug here must not end the heartbeats
                logger.exception("cluster: heartbeat failed")

    async def look(self) -> None:
        """Read the other nodes between our heartbeats."""
        with self._talking("read"):
            self.nodes = await self._read_nodes()
        self.on_heartbeat()

    # --- what the rest of the server asks ----------------------------------------------

    async def heartbeat(self) -> None:
        """Write who we are and what we carry, keep our streams, read the others."""
        state = self._local()
        self._measure_cpu()
        me = self.describe(state)
        with self._talking("heartbeat"):
            if self._shares_secret:
                # The first node's, kept by whoever knows it if Redis comes back empty.
                offer = self.secret or secrets.token_hex(16)
                await self._redis.set(PREFIX + "secret", offer, nx=True)
                value = await self._redis.get(PREFIX + "secret")
                self.secret = _text(value) if value is not None else None
            await self._redis.set(_node_key(self.node_id), me.to_json(), ex=EXPIRY_S)
            # Ours while we carry them; taken again if Redis came back empty.
            for stream_id in self.claimed - set(state.owned):
                await self._redis.eval(
                    RELEASE_SCRIPT, 1, _owner_key(stream_id), self.node_id
                )
            self.claimed = set(state.owned)
            for stream_id in sorted(self.claimed):
                owner = await self._redis.eval(
                    CLAIM_SCRIPT, 1, _owner_key(stream_id), self.node_id, EXPIRY_S
                )
                if _text(owner) != self.node_id:
                    self.claimed.discard(stream_id)
                    if stream_id in self._conflicts:
                        continue
                    self._conflicts.add(stream_id)
                    logger.error(
                        "cluster: stream %s is now owned by node %s; "
                        "two publishers use the same stream id",
                        stream_id,
                        _text(owner),
                    )
            self.nodes = await self._read_nodes()
            self.heartbeats += 1
        self.on_heartbeat()

    async def claim(self, stream_id: str) -> NodeInfo | None:
        """Own `stream_id` (a publisher or a camera starts here): None if it is ours
        now, or if Redis cannot tell (claimed at the next heartbeat instead); else the
        node that owns it."""
        owner: object = self.node_id
        with self._talking("claim"):
            owner = await self._redis.eval(
                CLAIM_SCRIPT, 1, _owner_key(stream_id), self.node_id, EXPIRY_S
            )
        if _text(owner) == self.node_id:
            self.claimed.add(stream_id)
            return None
        return self.nodes.get(_text(owner)) or NodeInfo(_text(owner), "", "unknown")

    async def owner(self, stream_id: str) -> NodeInfo | None:
        """The live node that owns `stream_id`, if any (and Redis answers)."""
        if stream_id in self.claimed:
            return self.describe(self._local())
        with self._talking("owner"):
            owner = await self._redis.get(_owner_key(stream_id))
            if owner is not None:
                return self.nodes.get(_text(owner)) or await self._read_node(
                    _text(owner)
                )
        return None

    def pick_edge(self, stream_id: str, exclude: str | None = None) -> NodeInfo | None:
        """The node a viewer of `stream_id` should go to: a live one that carries
        viewers and has room, preferring one that carries the stream already (no new
        pull from the origin), then the least loaded.
        The viewer is counted as sent there until the node's next heartbeat."""
        candidates = [
            node
            for node in self.nodes.values()
            if node.carries_viewers and node.id != exclude and not self._full(node)
        ]
        if not candidates:
            return None
        chosen = min(
            candidates,
            key=lambda n: (
                not n.carries(stream_id),
                # A node's port fills before its CPU (deploy/README.md): CPU
                # counts once it runs hot, else the share of its room, else the
                # fewest viewers (ours sent since included: a burst spreads).
                n.hot,
                round(self._share(n), 2),
                n.viewers + self._sent[n.id],
                n.id,
            ),
        )
        self._sent[chosen.id] += 1
        return chosen

    def _share(self, node: NodeInfo) -> float:
        """Its viewers' share of its capacity, with those we sent since it wrote."""
        if not node.capacity:
            return 0.0
        return (node.viewers + self._sent[node.id]) / node.capacity

    def _full(self, node: NodeInfo) -> bool:
        return bool(node.capacity) and self._share(node) >= 1

    def viewers_elsewhere(self, stream_id: str) -> dict[str, int]:
        """Viewers of `stream_id` on the other nodes, by node (≤ HEARTBEAT_S old)."""
        return {
            node.id: node.streams[stream_id]
            for node in self.nodes.values()
            if node.streams.get(stream_id)
        }

    def _measure_cpu(self) -> None:
        """CPU share of this node's processes since the last heartbeat."""
        cpu_s, now = process_cpu_s(os.getpid()), time.monotonic()
        before, then = self._cpu
        self.cpu_share = round((cpu_s - before) / max(now - then, 0.001), 3)
        self._cpu = (cpu_s, now)

    def describe(self, state: LocalState) -> NodeInfo:
        return NodeInfo(
            id=self.node_id,
            url=self.node_url,
            role=self.role,
            viewers=sum(state.streams.values()),
            capacity=self.capacity,
            cpu=self.cpu_share,
            cores=len(os.sched_getaffinity(0)) or 1,
            bitrate_out_bps=state.bitrate_out_bps,
            streams=state.streams,
            relays=state.relays,
            written_at=time.time(),
        )

    # --- Redis -----------------------------------------------------------------------

    async def _read_nodes(self) -> dict[str, NodeInfo]:
        keys = [key async for key in self._redis.scan_iter(match=PREFIX + "node:*")]
        values = await self._redis.mget(keys) if keys else []
        now = time.monotonic()
        nodes, seen = {}, set()
        for value in values:
            if value is None:
                continue
            node = NodeInfo.from_json(value)
            if node.id == self.node_id:
                continue
            seen.add(node.id)
            heard = self._heard.get(node.id)
            if heard is None or heard[0] != node.written_at:
                heard = self._heard[node.id] = (node.written_at, now)
                self._sent.pop(node.id, None)  # its figures count them now
            if now - heard[1] <= STALE_S:
                nodes[node.id] = node
        for gone in set(self._heard) - seen:
            del self._heard[gone]
        return nodes

    async def _read_node(self, node_id: str) -> NodeInfo | None:
        value = await self._redis.get(_node_key(node_id))
        return NodeInfo.from_json(value) if value is not None else None

    @contextlib.contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        """Run Redis calls: a failure marks Redis down (logged once per outage), and
        the first success after marks it up again."""
        try:
            yield
        except (RedisError, OSError, TimeoutError) as error:
            self.failures += 1
            if self.redis_up:
                logger.warning(
                    "cluster: Redis %s is down (%s failed: %s); serving what this "
                    "node carries, retrying every %g s",
                    self.redis_url,
                    what,
                    type(error).__name__,
                    HEARTBEAT_S,
                )
            self.redis_up = False
            self.nodes = {}  # nobody is known to be alive
        else:
            if not self.redis_up:
                if self.heartbeats or what != "heartbeat":
                    logger.info("cluster: Redis %s is back", self.redis_url)
                self.redis_up = True


def _node_key(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"


def _owner_key(stream_id: str) -> str:
    return f"{PREFIX}owner:{stream_id}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
