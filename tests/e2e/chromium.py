"""Headless Chromium harness for end-to-end WebRTC tests (Playwright, async API).

Requirements (no silent skips -- missing pieces are hard errors):
  * Debian package ``chromium``   (``apt-get install chromium``) -> /usr/bin/chromium
  * PyPI package  ``playwright``  (``pip install playwright``); do NOT run
    ``playwright install`` -- the system Chromium is used via executable_path.

Tests are meant to run inside a private network namespace holding only ``lo``:
    unshare -rn sh -c 'ip link set lo up; python -m pytest tests/e2e'
Pages must be loaded from http://127.0.0.1:PORT (or http://localhost:PORT),
which are secure contexts; about:blank has no navigator.mediaDevices.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.async_api import Browser

CHROMIUM_PATH = "/usr/bin/chromium"

CHROMIUM_ARGS = [
    "--no-sandbox",  # required when running as root (and inside unshare -r)
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",  # auto-grant camera/mic permission
    # Fake camera: its default format is already 1280x720 but at 20 fps;
    # fps=30 makes it a 1280x720@30 source.
    "--use-fake-device-for-media-stream=fps=30",
    # Without this, Chromium gathers no candidates on lo at all.  Loopback
    # host candidates are not mDNS-obfuscated, so WebRtcHideLocalIpsWithMdns
    # does not need to be disabled.
    "--allow-loopback-in-peer-connection",
    # Keep timers/encoders running at full speed in a headless, unfocused page.
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
]


def _missing_requirements() -> list[str]:
    problems = []
    if not (os.path.isfile(CHROMIUM_PATH) and os.access(CHROMIUM_PATH, os.X_OK)):
        problems.append(
            f"{CHROMIUM_PATH} not found: install the Debian package 'chromium' "
            "(apt-get install -y chromium)"
        )
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        problems.append(
            "Python package 'playwright' is not installed: pip install playwright "
            "(do not run 'playwright install'; the system chromium is used)"
        )
    return problems


@contextlib.asynccontextmanager
async def launch_chromium(
    *, extra_args: list[str] | None = None, headless: bool = True
) -> AsyncIterator[Browser]:
    """Yield a playwright.async_api.Browser running /usr/bin/chromium.

    Raises RuntimeError (never skips) if chromium or playwright is missing.
    """
    problems = _missing_requirements()
    if problems:
        raise RuntimeError(
            "Chromium e2e harness unavailable:\n  " + "\n  ".join(problems)
        )
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM_PATH,
            headless=headless,
            args=CHROMIUM_ARGS + list(extra_args or []),
            # Debian's /usr/bin/chromium is a shell wrapper; it honours
            # CHROMIUM_FLAGS and forwards our arguments unchanged.
            env={**os.environ, "CHROMIUM_FLAGS": ""},
        )
        try:
            yield browser
        finally:
            await browser.close()


# Evaluate with: status = await page.evaluate(WHIP_PUBLISH_JS,
#     {"whipUrl": url, "width": 1280, "height": 720, "degradation": None})
# `degradation`: an RTCDegradationPreference to set on the video sender, or None.
# Side effects: window.pc (the RTCPeerConnection), window.stream,
# window.whipResource (absolute Location URL, or null), window.whipError
# (response body when status is not 2xx), window.degradationPreferenceSet.
WHIP_PUBLISH_JS = r"""
async ({whipUrl, width, height, degradation}) => {
  const stream = await navigator.mediaDevices.getUserMedia({
    video: {width: {exact: width}, height: {exact: height}},
    audio: true,
  });
  window.stream = stream;
  const pc = new RTCPeerConnection({iceServers: []});
  window.pc = pc;
  let videoSender = null;
  for (const track of stream.getTracks()) {
    const tr = pc.addTransceiver(track, {direction: 'sendonly', streams: [stream]});
    if (track.kind === 'video') videoSender = tr.sender;
  }
  window.degradationPreferenceSet = false;
  if (videoSender && degradation) {
    try {
      const params = videoSender.getParameters();
      params.degradationPreference = degradation;
      await videoSender.setParameters(params);
      window.degradationPreferenceSet =
        videoSender.getParameters().degradationPreference === degradation;
    } catch (e) {
      window.degradationPreferenceError = String(e);
    }
  }
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== 'complete') {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 5000);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); }
      });
    });
  }
  const resp = await fetch(whipUrl, {
    method: 'POST',
    headers: {'Content-Type': 'application/sdp'},
    body: pc.localDescription.sdp,
  });
  const location = resp.headers.get('Location');
  window.whipResource = location ? new URL(location, whipUrl).href : null;
  const body = await resp.text();
  if (resp.ok) {
    await pc.setRemoteDescription({type: 'answer', sdp: body});
  } else {
    window.whipError = body;
  }
  return resp.status;
}
"""

# Evaluate with: stats = await page.evaluate(OUTBOUND_VIDEO_STATS_JS)
# Returns null until the video outbound-rtp stats object exists.
OUTBOUND_VIDEO_STATS_JS = r"""
async () => {
  if (!window.pc) return null;
  const report = await window.pc.getStats();
  for (const s of report.values()) {
    if (s.type === 'outbound-rtp' && s.kind === 'video') {
      return {
        frameWidth: s.frameWidth ?? null,
        frameHeight: s.frameHeight ?? null,
        framesSent: s.framesSent ?? 0,
        qualityLimitationReason: s.qualityLimitationReason ?? null,
        targetBitrate: s.targetBitrate ?? null,
        bytesSent: s.bytesSent ?? 0,
      };
    }
  }
  return null;
}
"""
