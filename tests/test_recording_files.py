"""Recording files over HTTP: listed (files of earlier runs probed), served with range
requests to the admin key, a signed URL or a view token, deleted; names from requests
never reach outside the directory; retention prunes the oldest first."""

from __future__ import annotations

import asyncio
import fractions
import os
import time
from pathlib import Path

import av
import numpy
import pytest

from broadcast import tokens
from broadcast.recording.recordings import RECORDINGS
from tests.peers import publish, wait_for
from tests.test_http_smuggling import exchange

KEY = "adm1n"
ADMIN = {"Authorization": f"Bearer {KEY}"}
SECRET = "token-secret"


def write_webm(path: Path, seconds: float = 2.0) -> Path:
    """A small VP8 WebM, as a recording of an earlier run would be."""
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for index in range(int(seconds * 30)):
            image = numpy.full((120, 160, 3), index * 4 % 256, numpy.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, fractions.Fraction(1, 30)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture
async def files(make_server, tmp_path):
    """A server whose recordings directory holds two files of an earlier run, junk with
    a valid name, a file with another name, and a canary outside it."""
    directory = tmp_path / "recordings"
    directory.mkdir()
    write_webm(directory / "talk-20261201T100000Z.webm")
    write_webm(directory / "talk-20261202T100000Z.webm", seconds=1)
    (directory / "junk-20261203T100000Z.mp4").write_bytes(os.urandom(5000))
    (directory / "notes.txt").write_text("not a recording")
    (tmp_path / "canary.txt").write_text("outside")
    server = await make_server(
        admin_key=KEY,
        recording_dir=str(directory),
        token_secret=SECRET,
        private_viewing=True,
    )
    return server, directory


async def get(http, server, path: str, headers=None):
    async with http.get(server.make_url(path), headers=headers or {}) as response:
        return response.status, dict(response.headers), await response.read()


async def record_live(http, server, authorization: str | None = None):
    """Publish stream `live` and record it; (the publisher, the file being written)."""
    headers = {"Authorization": authorization} if authorization else None
    publisher = await publish(http, str(server.make_url("/whip/live")), headers=headers)
    async with http.post(
        server.make_url("/api/streams/live/recording"), headers=ADMIN
    ) as response:
        assert response.status == 201
    recorders = server.app[RECORDINGS].recorders
    await wait_for(lambda: recorders["live"].file is not None, timeout=15)
    return publisher, recorders["live"].file.path


async def test_the_list_probes_files_it_did_not_write(http, files):
    server, directory = files
    async with http.get(server.make_url("/api/recordings"), headers=ADMIN) as response:
        listing = await response.json()
    assert [entry["file"] for entry in listing] == [
        "junk-20261203T100000Z.mp4",
        "talk-20261202T100000Z.webm",
        "talk-20261201T100000Z.webm",
    ]
    junk, _, talk = listing
    assert (talk["stream"], talk["start"], talk["state"]) == (
        "talk",
        "2026-12-01T10:00:00Z",
        "done",
    )
    assert abs(talk["duration"] - 2.0) < 0.2 and talk["codecs"] == ["video/VP8"]
    assert talk["size"] == (directory / talk["file"]).stat().st_size
    assert junk["state"] == "failed" and junk["duration"] is None
    async with http.get(server.make_url("/api/recordings")) as response:
        assert response.status == 401


async def test_range_requests_answer_the_right_bytes(http, files):
    server, directory = files
    name = "talk-20261201T100000Z.webm"
    data = (directory / name).read_bytes()
    path = f"/recordings/{name}"
    status, headers, body = await get(http, server, path, ADMIN)
    assert (status, body) == (200, data)
    assert headers["Accept-Ranges"] == "bytes"
    size = len(data)
    for asked, expected, answered in (
        ("bytes=0-99", data[:100], f"bytes 0-99/{size}"),
        ("bytes=100-", data[100:], f"bytes 100-{size - 1}/{size}"),
        ("bytes=-50", data[-50:], f"bytes {size - 50}-{size - 1}/{size}"),
    ):
        status, headers, body = await get(http, server, path, {**ADMIN, "Range": asked})
        assert (status, body, headers["Content-Range"]) == (206, expected, answered)
    past = {**ADMIN, "Range": f"bytes={len(data) + 10}-"}
    assert (await get(http, server, path, past))[0] == 416


async def test_who_may_fetch_a_file(http, files):
    server, _ = files
    name = "talk-20261201T100000Z.webm"
    path = f"/recordings/{name}"
    assert (await get(http, server, path))[0] == 401
    assert (await get(http, server, path, {"Authorization": "Bearer no"}))[0] == 401
    async with http.get(server.make_url("/api/recordings"), headers=ADMIN) as response:
        urls = {entry["file"]: entry["url"] for entry in await response.json()}
    assert (await get(http, server, urls[name]))[0] == 200  # the signed URL alone
    other = urls["talk-20261202T100000Z.webm"].split("?", 1)[1]
    assert (await get(http, server, f"{path}?{other}"))[0] == 401  # another file's
    tampered = urls[name][:-1] + ("0" if urls[name][-1] != "0" else "1")
    assert (await get(http, server, tampered))[0] == 401
    expired = tokens.mint(KEY, "recording", name, -10)
    assert (await get(http, server, f"{path}?token={expired}"))[0] == 401
    # Viewing is private: a view token of the file's stream opens it, of another not.
    view = tokens.mint(SECRET, tokens.VIEW, "talk", 60)
    assert (await get(http, server, f"{path}?token={view}"))[0] == 200
    elsewhere = tokens.mint(SECRET, tokens.VIEW, "other", 60)
    assert (await get(http, server, f"{path}?token={elsewhere}"))[0] == 401
    # A view token is not a recording token, nor the other way round.
    publish_token = tokens.mint(SECRET, tokens.PUBLISH, "talk", 60)
    assert (await get(http, server, f"{path}?token={publish_token}"))[0] == 401


@pytest.mark.parametrize(
    "path",
    [
        "/recordings/..%2F..%2Fcanary.txt",
        "/recordings/%2e%2e%2fcanary.txt",
        "/recordings/talk-20261201T100000Z.webm%00.txt",
        "/recordings/talk-20261201T100000Z.webm%2F..%2F..%2Fcanary.txt",
        "/recordings/%2Fetc%2Fpasswd",
        "/recordings/..%5C..%5Ccanary.txt",
        "/recordings/notes.txt",
    ],
)
async def test_names_never_leave_the_directory(http, files, tmp_path, path):
    server, _ = files
    for method in ("GET", "DELETE"):
        target = path.replace("/recordings/", "/api/recordings/", 1)
        url = server.make_url(path if method == "GET" else target)
        async with http.request(method, url, headers=ADMIN) as response:
            assert response.status in (400, 404), (method, path, response.status)
            assert b"outside" not in await response.read()
    assert (tmp_path / "canary.txt").read_text() == "outside"


async def test_a_view_token_opens_nothing_when_viewing_is_public(
    http, make_server, tmp_path
):
    write_webm(tmp_path / "talk-20261201T100000Z.webm", seconds=1)
    server = await make_server(
        admin_key=KEY, recording_dir=str(tmp_path), token_secret=SECRET
    )
    view = tokens.mint(SECRET, tokens.VIEW, "talk", 60)
    path = f"/recordings/talk-20261201T100000Z.webm?token={view}"
    assert (await get(http, server, path))[0] == 401


@pytest.mark.parametrize(
    "path",
    [
        "/recordings/../canary.txt",
        "/recordings/../broadcast/app.py",
        "/recordings/%2e%2e/canary.txt",
        "/recordings/talk-20261201T100000Z.webm/../../canary.txt",
        "/recordings//etc/passwd",
        "/recordings/..\\..\\canary.txt",
        "/recordings/talk-20261201T100000Z.webm\\..\\..\\canary.txt",
        "/recordings/talk-20261201T100000Z.webm%00",
        "/recordings/talk-20261201T100000Z.webm.txt",
        "/recordings/talk-20261201T100000Z.WEBM",
        "/recordings/ talk-20261201T100000Z.webm",
        "/recordings/talk-20261201T100000Z.webm%0A",
    ],
)
async def test_raw_paths_never_leave_the_directory(files, tmp_path, path):
    """Sent as bytes, so no client normalizes the `..` away before the server does."""
    server, _ = files
    for method, target in (
        ("GET", path),
        ("DELETE", path.replace("/recordings/", "/api/recordings/", 1)),
    ):
        request = (
            f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}"
            "\r\nConnection: close\r\n\r\n"
        )
        statuses, received, _ = await exchange(server, request.encode())
        assert statuses and statuses[0] in (400, 404), (method, target, statuses)
        assert b"outside" not in received and b"create_app" not in received
    assert (tmp_path / "canary.txt").read_text() == "outside"
    assert (files[1] / "talk-20261201T100000Z.webm").exists()


async def test_an_absolute_path_is_a_bad_name(http, files, tmp_path):
    server, _ = files
    canary = str(tmp_path / "canary.txt").replace("/", "%2F")
    for method, prefix in (("GET", "/recordings/"), ("DELETE", "/api/recordings/")):
        url = server.make_url(prefix + canary)
        async with http.request(method, url, headers=ADMIN) as response:
            assert response.status == 400, method
    assert (tmp_path / "canary.txt").read_text() == "outside"


async def test_a_link_out_of_the_directory_is_not_followed(http, files, tmp_path):
    server, directory = files
    (directory / "link-20261204T100000Z.webm").symlink_to(tmp_path / "canary.txt")
    path = "/recordings/link-20261204T100000Z.webm"
    assert (await get(http, server, path, ADMIN))[0] == 404
    async with http.delete(
        server.make_url("/api/recordings/link-20261204T100000Z.webm"), headers=ADMIN
    ) as response:
        assert response.status == 404
    assert (tmp_path / "canary.txt").read_text() == "outside"


async def test_a_link_out_of_the_directory_is_not_listed(http, files, tmp_path):
    server, directory = files
    outside = write_webm(tmp_path / "elsewhere.webm", seconds=1)
    (directory / "link-20261204T100000Z.webm").symlink_to(outside)
    async with http.get(server.make_url("/api/recordings"), headers=ADMIN) as response:
        names = [entry["file"] for entry in await response.json()]
    assert "link-20261204T100000Z.webm" not in names


async def test_delete_and_a_file_being_written(http, files):
    server, directory = files
    name = "talk-20261202T100000Z.webm"
    url = server.make_url(f"/api/recordings/{name}")
    async with http.delete(url, headers=ADMIN) as response:
        assert (response.status, await response.json()) == (200, {"deleted": name})
    assert not (directory / name).exists()
    async with http.delete(url, headers=ADMIN) as response:
        assert (response.status, (await response.json())["error"]) == (
            404,
            "recording_not_found",
        )
    token = tokens.mint(SECRET, tokens.PUBLISH, "live", 60)
    publisher, path = await record_live(http, server, f"Bearer {token}")
    writing = path.name
    async with http.delete(
        server.make_url(f"/api/recordings/{writing}"), headers=ADMIN
    ) as response:
        assert (response.status, (await response.json())["error"]) == (
            409,
            "recording_in_progress",
        )
    async with http.get(server.make_url("/api/recordings"), headers=ADMIN) as response:
        states = {e["file"]: e["state"] for e in await response.json()}
    assert states[writing] == "recording"
    await publisher.close()


async def test_retention_prunes_the_oldest_finished_files(make_server, tmp_path):
    directory = tmp_path / "recordings"
    directory.mkdir()
    now = time.time()
    for day, age_days in ((1, 40), (2, 20), (3, 10)):
        path = write_webm(directory / f"talk-2026110{day}T100000Z.webm", seconds=1)
        os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    size = (directory / "talk-20261103T100000Z.webm").stat().st_size
    server = await make_server(
        recording_dir=str(directory),
        recording_keep_days=30,
        recording_max_total_gb=2.5 * size / 1e9,  # room for two files, not three
    )
    # At start: the file 40 days old goes.
    await wait_for(
        lambda: not (directory / "talk-20261101T100000Z.webm").exists(), timeout=5
    )
    assert await asyncio.to_thread(server.app[RECORDINGS].files.prune) == []
    assert sorted(p.name for p in directory.iterdir()) == [
        "talk-20261102T100000Z.webm",
        "talk-20261103T100000Z.webm",
    ]
    write_webm(directory / "talk-20261104T100000Z.webm", seconds=1)
    pruned = await asyncio.to_thread(server.app[RECORDINGS].files.prune)
    assert pruned == ["talk-20261102T100000Z.webm"]  # over the size: oldest first


async def test_retention_never_prunes_the_file_being_written(
    http, make_server, tmp_path
):
    server = await make_server(
        admin_key=KEY, recording_dir=str(tmp_path), recording_max_total_gb=1e-6
    )
    publisher, writing = await record_live(http, server)
    await wait_for(lambda: writing.stat().st_size > 2000, timeout=15)  # over 1 kB
    write_webm(tmp_path / "talk-20261101T100000Z.webm", seconds=1)
    os.utime(tmp_path / "talk-20261101T100000Z.webm", (time.time() - 60,) * 2)
    pruned = await asyncio.to_thread(server.app[RECORDINGS].files.prune)
    assert pruned == ["talk-20261101T100000Z.webm"]
    assert writing.exists()
    await publisher.close()
