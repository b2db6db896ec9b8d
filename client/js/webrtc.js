// WHIP/WHEP over fetch, and what both pages read from getStats.

/** An HTTP error answer of the server: {error, message}, and its Retry-After. */
export class ServerError extends Error {
  constructor(status, code, message, retryAfterS = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS;
  }
}

/** Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date), or null. */
function retryAfterSeconds(header) {
  if (!header) return null;
  if (/^\d+$/.test(header.trim())) return Number(header.trim());
  const at = Date.parse(header);
  return Number.isNaN(at) ? null : Math.max(0, (at - Date.now()) / 1000);
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

// A TURN server may take seconds to allocate; past this the candidates found so far go.
const TRICKLE_GATHERING_MS = 10000;

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
 *
 * With `trickle`, the offer goes at once with the candidates gathered so far and the
 * rest follow in one PATCH (RFC 9725 §4.3.1): Chromium takes 100-150 ms to finish
 * gathering even on loopback, and the server learns our address from our own checks
 * meanwhile (RFC 8445 §7.3.1.3), so waiting for every candidate only delays the picture.
 * `servers`, a promise of ICE servers, is applied once the offer is made: making it
 * (20-50 ms on a busy machine) need not wait for the OPTIONS that names them.
 */
export async function negotiate(pc, url, key, {trickle = false, servers = null} = {}) {
  const made = await pc.createOffer();
  // Only gathering, which setLocalDescription starts, needs them.
  if (servers) pc.setConfiguration({...pc.getConfiguration(), iceServers: await servers});
  await pc.setLocalDescription(made);
  if (!trickle) await iceGathered(pc);
  const offer = pc.localDescription.sdp;
  const headers = {'Content-Type': 'application/sdp'};
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(url, {method: 'POST', headers, body: offer});
  const body = await response.text();
  if (response.status !== 201) {
    let code = 'http_' + response.status;
    let message = body;
    try {
      ({error: code, message} = JSON.parse(body));
    } catch (e) { /* not JSON: keep the text */ }
    throw new ServerError(
      response.status, code, message, retryAfterSeconds(response.headers.get('Retry-After')));
  }
  await pc.setRemoteDescription({type: 'answer', sdp: body});
  // In a cluster a node may redirect us (307) to an edge: the session lives where the
  // request ended, so its relative Location resolves against that URL.
  const answeredBy = response.url || url;
  const session = new URL(response.headers.get('Location'), answeredBy).href;
  if (trickle) trickleTheRest(pc, session, offer, key);
  return {session, watch: alternateLink(response.headers.get('Link'), answeredBy)};
}

/** Once gathering ends, PATCH the candidates the offer lacked and end-of-candidates. */
async function trickleTheRest(pc, sessionUrl, offer, key) {
  await iceGathered(pc, TRICKLE_GATHERING_MS);
  if (pc.signalingState === 'closed') return;
  const sent = new Set(offer.split(/\r?\n/).filter((line) => line.startsWith('a=candidate:')));
  const lines = pc.localDescription.sdp.split(/\r?\n/);
  const first = (prefix) => lines.find((line) => line.startsWith(prefix));
  const fresh = new Set(lines.filter((line) => line.startsWith('a=candidate:') && !sent.has(line)));
  // RFC 8840 §9: the ICE credentials, then the (bundled) first media section's candidates.
  const fragment = [
    first('a=ice-ufrag:'), first('a=ice-pwd:'), first('m='), first('a=mid:'),
    ...fresh, 'a=end-of-candidates', '',
  ].join('\r\n');
  const headers = {'Content-Type': 'application/trickle-ice-sdpfrag'};
  if (key) headers.Authorization = `Bearer ${key}`;
  await fetch(sessionUrl, {method: 'PATCH', headers, body: fragment}).catch(() => {});
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
