// WHIP/WHEP over fetch, and what both pages read from getStats.

/** An HTTP error answer of the server: {error, message}. */
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

/** The selected candidate pair with its two ends, or null before one is chosen. */
export function selectedPair(report) {
  for (const s of report.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      const pair = report.get(s.selectedCandidatePairId);
      if (pair) {
        return {pair, local: report.get(pair.localCandidateId), remote: report.get(pair.remoteCandidateId)};
      }
    }
  }
  return null;
}

/** The received video's figures both the stats overlay and the quality report show. */
function inboundVideo(report) {
  for (const s of report.values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      const received = s.packetsReceived || 0;
      const lost = Math.max(0, s.packetsLost || 0);
      return {
        stats: s,
        lossPercent: received + lost ? 100 * lost / (received + lost) : 0,
        jitterBufferSeconds: s.jitterBufferEmittedCount
          ? s.jitterBufferDelay / s.jitterBufferEmittedCount : 0,
      };
    }
  }
  return null;
}

/** What a viewer receives: resolution, fps, bitrate, loss and an estimate of delay. */
export async function receivingVideo(pc, previous) {
  const report = await pc.getStats();
  const video = inboundVideo(report);
  if (!video) return null;
  const selected = selectedPair(report);
  const rttSeconds = (selected && selected.pair.currentRoundTripTime) || 0;
  const s = video.stats;
  const bytes = rate(s, previous.sample, 'bytesReceived');
  previous.sample = s;
  return {
    width: s.frameWidth, height: s.frameHeight, fps: s.framesPerSecond,
    kbps: bytes === null ? null : bytes * 8 / 1000,
    lossPercent: video.lossPercent,
    delayMs: Math.round(1000 * (video.jitterBufferSeconds + rttSeconds / 2)),
  };
}

/** The report a viewer page sends over /ws so the operator sees what viewers see. */
export async function qualityReport(pc) {
  const report = await pc.getStats();
  const video = inboundVideo(report);
  if (!video) return null;
  const local = selectedPair(report)?.local;
  const s = video.stats;
  return {
    type: 'quality',
    width: s.frameWidth || 0,
    height: s.frameHeight || 0,
    fps: s.framesPerSecond || 0,
    freezes: s.freezeCount || 0,
    jitter_buffer_ms: Math.round(1000 * video.jitterBufferSeconds),
    loss_percent: video.lossPercent,
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
