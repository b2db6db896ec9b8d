// WHIP/WHEP over fetch, and what both pages read from getStats.

/** An HTTP error answer of the server: {error, message} (DESIGN §4). */
export class ServerError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * The STUN/TURN servers the server hands out, from `Link: <url>; rel="ice-server"`
 * headers of an OPTIONS request (RFC 9725 §4.6). [] when it names none or fails.
 */
export async function iceServers(url) {
  try {
    const response = await fetch(url, {method: 'OPTIONS'});
    const header = response.headers.get('Link') || '';
    return header.split(/,\s*(?=<)/).map((link) => {
      const target = /<([^>]+)>/.exec(link);
      const params = Object.fromEntries(
        [...link.matchAll(/([\w-]+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
      if (!target || params.rel !== 'ice-server') return null;
      return params.username
        ? {urls: target[1], username: params.username, credential: params.credential}
        : {urls: target[1]};
    }).filter(Boolean);
  } catch (e) {
    return [];
  }
}

/** Wait until ICE gathering completes (or `timeoutMs`), so the offer holds candidates. */
export function iceGathered(pc, timeoutMs = 2000) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === 'complete') done();
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/** The target of a `Link: <...>; rel="alternate"` header (WHIP: the viewer page). */
function alternateLink(header, base) {
  const match = /<([^>]+)>\s*;\s*rel="?alternate"?/.exec(header || '');
  return match ? new URL(match[1], base).href : null;
}

/**
 * POST our offer to a WHIP or WHEP endpoint and apply the answer.
 * Returns {session, watch}: the session URL (Location) and, from WHIP, the viewer
 * page's link. Throws ServerError, or TypeError when offline.
 */
export async function negotiate(pc, url, key) {
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc);
  const headers = {'Content-Type': 'application/sdp'};
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(url, {method: 'POST', headers, body: pc.localDescription.sdp});
  const body = await response.text();
  if (response.status !== 201) {
    let code = 'http_' + response.status;
    let message = body;
    try {
      ({error: code, message} = JSON.parse(body));
    } catch (e) { /* not JSON: keep the text */ }
    throw new ServerError(response.status, code, message);
  }
  await pc.setRemoteDescription({type: 'answer', sdp: body});
  return {
    session: new URL(response.headers.get('Location'), url).href,
    watch: alternateLink(response.headers.get('Link'), url),
  };
}

/** End a session; `keepalive` lets it go out while the page unloads. */
export function hangUp(sessionUrl) {
  if (!sessionUrl) return Promise.resolve();
  return fetch(sessionUrl, {method: 'DELETE', keepalive: true}).catch(() => {});
}

/** Per-second rates from two cumulative stats samples. */
function rate(now, before, field) {
  if (!before || now[field] === undefined) return null;
  const seconds = (now.timestamp - before.timestamp) / 1000;
  return seconds > 0 ? (now[field] - before[field]) / seconds : null;
}

/** What the publisher sends: {width, height, fps, kbps, limitation}. */
export async function sendingVideo(pc, previous) {
  const report = await pc.getStats();
  for (const s of report.values()) {
    if (s.type === 'outbound-rtp' && s.kind === 'video') {
      const bytes = rate(s, previous.sample, 'bytesSent');
      previous.sample = s;
      return {
        width: s.frameWidth, height: s.frameHeight,
        fps: s.framesPerSecond, kbps: bytes === null ? null : bytes * 8 / 1000,
        limitation: s.qualityLimitationReason || 'none',
      };
    }
  }
  return null;
}

/** What a viewer receives: resolution, fps, bitrate, loss and an estimate of delay. */
export async function receivingVideo(pc, previous) {
  const report = await pc.getStats();
  let video = null;
  let rttSeconds = 0;
  for (const s of report.values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'video') video = s;
    if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime) {
      rttSeconds = s.currentRoundTripTime;
    }
  }
  if (!video) return null;
  const bytes = rate(video, previous.sample, 'bytesReceived');
  const received = video.packetsReceived || 0;
  const lost = video.packetsLost || 0;
  const buffer = video.jitterBufferEmittedCount
    ? video.jitterBufferDelay / video.jitterBufferEmittedCount : 0;
  previous.sample = video;
  return {
    width: video.frameWidth, height: video.frameHeight, fps: video.framesPerSecond,
    kbps: bytes === null ? null : bytes * 8 / 1000,
    lossPercent: received + lost ? 100 * lost / (received + lost) : 0,
    delayMs: Math.round(1000 * (buffer + rttSeconds / 2)),
  };
}

/** The report a viewer page sends over /ws so the operator sees what viewers see. */
export async function qualityReport(pc) {
  const report = await pc.getStats();
  let video = null;
  let pair = null;
  for (const s of report.values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'video') video = s;
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      pair = report.get(s.selectedCandidatePairId);
    }
  }
  if (!video) return null;
  const local = pair ? report.get(pair.localCandidateId) : null;
  const received = video.packetsReceived || 0;
  const lost = Math.max(0, video.packetsLost || 0);
  return {
    type: 'quality',
    width: video.frameWidth || 0,
    height: video.frameHeight || 0,
    fps: video.framesPerSecond || 0,
    freezes: video.freezeCount || 0,
    jitter_buffer_ms: video.jitterBufferEmittedCount
      ? Math.round(1000 * video.jitterBufferDelay / video.jitterBufferEmittedCount) : 0,
    loss_percent: received + lost ? 100 * lost / (received + lost) : 0,
    candidate: local ? local.candidateType : 'unknown',
    tcp: local ? local.protocol === 'tcp' : false,
  };
}

/** "1280×720 · 30 fps · 2.4 Mbit/s" */
export function describe(stats) {
  const parts = [];
  if (stats.width) parts.push(`${stats.width}×${stats.height}`);
  if (stats.fps) parts.push(`${Math.round(stats.fps)} fps`);
  if (stats.kbps !== null && stats.kbps !== undefined) {
    parts.push(stats.kbps >= 1000 ? `${(stats.kbps / 1000).toFixed(1)} Mbit/s`
      : `${Math.round(stats.kbps)} kbit/s`);
  }
  return parts.join(' · ');
}
