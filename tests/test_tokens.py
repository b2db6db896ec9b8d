"""Signed, expiring tokens: publish one stream, watch a private one."""

from __future__ import annotations

import asyncio
import time

import pytest

from broadcast import tokens
from broadcast.cli import main
from tests.peers import publish, recvonly_offer, watch

SECRET = "a-long-random-secret"


def test_a_token_is_for_one_stream_one_purpose_and_a_limited_time(monkeypatch):
    token = tokens.mint(SECRET, tokens.PUBLISH, "gate", 60)
    assert tokens.verify(SECRET, token, tokens.PUBLISH, "gate")
    assert not tokens.verify(SECRET, token, tokens.PUBLISH, "other")
    assert not tokens.verify(SECRET, token, tokens.VIEW, "gate")
    assert not tokens.verify("another-secret", token, tokens.PUBLISH, "gate")
    purpose, expiry, signature = token.split(".")
    later = f"{purpose}.{int(expiry) + 3600}.{signature}"
    assert not tokens.verify(SECRET, later, tokens.PUBLISH, "gate")  # tampered expiry
    for garbage in (None, "", "publish", "publish.x.y", "a.b.c.d", token + "0"):
        assert not tokens.verify(SECRET, garbage, tokens.PUBLISH, "gate")
    monkeypatch.setattr(time, "time", lambda: int(expiry) + 1)
    assert not tokens.verify(SECRET, token, tokens.PUBLISH, "gate")


async def test_a_publish_token_opens_its_stream_only(make_server, http):
    server = await make_server(token_secret=SECRET)
    token = tokens.mint(SECRET, tokens.PUBLISH, "gate", 60)
    bearer = {"Authorization": f"Bearer {token}"}
    for path in ("/whip/other", "/whip"):
        with pytest.raises(AssertionError, match="401"):
            await publish(http, str(server.make_url(path)), headers=bearer)
    publisher = await publish(http, str(server.make_url("/whip/gate")), headers=bearer)
    await publisher.close()


async def test_private_streams_need_a_view_token_and_do_not_reveal_themselves(
    make_server, http
):
    server = await make_server(token_secret=SECRET, private_viewing=True)
    publisher = await publish(
        http, str(server.make_url("/whip/secret")), headers=_publish_token("secret")
    )
    await publisher.wait_connected()
    offer = await recvonly_offer()
    answers = []
    for path in ("/whep/secret", "/whep/nothing-here", "/whep/secret?token=view.1.x"):
        async with http.post(
            server.make_url(path),
            data=offer,
            headers={"Content-Type": "application/sdp"},
        ) as r:
            answers.append((r.status, (await r.json())["error"]))
    assert answers == [(404, "stream_not_found")] * 3

    async with http.ws_connect(server.make_url("/ws")) as ws:
        await ws.send_json({"type": "subscribe", "stream": "secret"})
        assert (await ws.receive_json())["state"] == "offline"

    # The link the publisher got carries a working view token.
    async with http.post(
        server.make_url("/whip/secret2"),
        data=offer.replace("recvonly", "sendonly"),
        headers={"Content-Type": "application/sdp", **_publish_token("secret2")},
    ) as r:
        link = r.headers["Link"]
    assert "/watch/secret2?token=view." in link
    token = tokens.mint(SECRET, tokens.VIEW, "secret", 60)
    viewer = await watch(http, str(server.make_url(f"/whep/secret?token={token}")))
    await viewer.wait_connected()
    async with http.ws_connect(server.make_url("/ws")) as ws:
        await ws.send_json({"type": "subscribe", "stream": "secret", "token": token})
        assert (await ws.receive_json())["state"] == "live"
    await asyncio.gather(viewer.close(), publisher.close())


def _publish_token(stream_id: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {tokens.mint(SECRET, tokens.PUBLISH, stream_id, 60)}"
    }


def test_cli_mints_tokens_from_the_config_secret(tmp_path, capsys):
    config = tmp_path / "flashphoner.xml"
    config.write_text(
        f"<flashphoner><auth><token_secret>{SECRET}</token_secret></auth></flashphoner>"
    )
    main(["token", "view", "gate", "--config", str(config), "--ttl", "60"])
    token = capsys.readouterr().out.strip()
    assert tokens.verify(SECRET, token, tokens.VIEW, "gate")
    config.write_text("<flashphoner/>")
    with pytest.raises(SystemExit):
        main(["token", "view", "gate", "--config", str(config)])
    assert "token_secret" in capsys.readouterr().err


def test_odd_digits_and_huge_expiries_are_refused_not_crashed():
    for expiry in ("²", "1" * 5000, "١٢٣"):
        assert not tokens.verify(SECRET, f"view.{expiry}.x", tokens.VIEW, "gate")
