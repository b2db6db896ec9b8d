import asyncio

from tests.peers import publish, watch


async def test_smoke(server, http):
    publisher = await publish(http, str(server.make_url("/whip/s1")))
    await publisher.wait_connected()
    viewer = await watch(http, str(server.make_url("/whep/s1")))
    await viewer.wait_connected()
    for _ in range(100):
        if len(viewer.frames.get("video", [])) > 10:
            break
        await asyncio.sleep(0.1)
    print({k: len(v) for k, v in viewer.frames.items()})
    assert len(viewer.frames.get("video", [])) > 10
    assert viewer.frames.get("audio")
    await viewer.close()
    await publisher.close()
