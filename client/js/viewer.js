// Viewer page: WHEP playback that waits for the broadcast and comes back by itself.

import {subscribe} from './events.js';
import {
  ServerError, describe, hangUp, iceGathered, iceServers, negotiate, qualityReport,
  receivingVideo,
} from './webrtc.js';

const $ = (id) => document.getElementById(id);
const streamId = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');
// Private streams: the share link carries a view token.
const token = new URLSearchParams(location.search).get('token');
const RETRY_MS = [500, 1000, 2000, 4000, 8000];
// A full or rate-limited server (429, 503): wait what Retry-After asks, or this, doubled
// per busy answer up to the cap, plus up to half again at random so that an audience
// refused together does not come back together.
const BUSY_DEFAULT_S = 3;
const BUSY_MAX_S = 30;
const BUSY_JITTER = 0.5;
const STATS_INTERVAL_MS = 1000;
const QUALITY_REPORT_MS = 5000;
const DISCONNECTED_MS = 4000;
// An ICE restart that has not connected by then gives way to a new session.
const RESTART_MS = 5000;

const TEXT = {
  connecting: 'Connecting…',
  waiting: 'Waiting for the broadcast to start…',
  live: 'LIVE',
  reconnecting: 'The presenter is reconnecting…',
  ended: 'The broadcast has ended.',
  busy: 'The server is busy, retrying…',
  notfound: 'There is no such broadcast.',
  stopped: 'Stopped.',
};

const state = {
  pc: null, session: null, streamState: 'offline', attempt: 0, retryTimer: null,
  playing: true, statsTimer: null, connecting: false,
  dropTimer: null, busyAttempt: 0, busy: false, restarting: false, restarted: false,
};
const whepUrl = new URL(`/whep/${encodeURIComponent(streamId)}`, location.href);
if (token) whepUrl.searchParams.set('token', token);
// Which of a simulcast broadcast's sizes to get: auto (the best), high, medium, low.
const QUALITIES = ['auto', 'high', 'medium', 'low'];
const askedQuality = new URLSearchParams(location.search).get('quality');
if (QUALITIES.includes(askedQuality) && askedQuality !== 'auto') {
  whepUrl.searchParams.set('quality', askedQuality);
}
// Asked at once, while the page is still loading, for the first connection.
let firstIceServers = iceServers(whepUrl.href);

function show(key) {
  $('status').textContent = TEXT[key];
  $('status').dataset.state = key;
  $('status').classList.toggle('live', key === 'live');
}

async function connect() {
  if (state.pc || state.connecting || state.busy || !state.playing) return;
  state.connecting = true;
  clearTimeout(state.retryTimer);
  // TURN credentials expire: a later connection asks again.
  const servers = firstIceServers || iceServers(whepUrl.href);
  firstIceServers = null;
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  const media = new MediaStream();
  pc.addEventListener('track', (event) => {
    media.addTrack(event.track);
    $('player').srcObject = media;
    $('player').play().catch(() => {});
  });
  pc.addEventListener('connectionstatechange', () => {
    if (pc !== state.pc) return;
    if (pc.connectionState === 'connected') {
      clearTimeout(state.dropTimer);
      state.restarted = false;
    } else if (pc.connectionState === 'closed') {
      drop();
      scheduleRetry();
    } else if (pc.connectionState === 'failed') {
      clearTimeout(state.dropTimer);
      recover(pc);
    } else if (pc.connectionState === 'disconnected') {
      // Browsers wait ~30 s before "failed": recover after a few seconds instead.
      clearTimeout(state.dropTimer);
      state.dropTimer = setTimeout(() => {
        if (pc === state.pc && pc.connectionState === 'disconnected') recover(pc);
      }, DISCONNECTED_MS);
    }
  });
  try {
    ({session: state.session} = await negotiate(
      pc, whepUrl.href, null, {trickle: true, servers}));
    state.pc = pc;
    state.attempt = 0;
    state.busyAttempt = 0;
    show(state.streamState === 'reconnecting' ? 'reconnecting' : 'live');
  } catch (error) {
    pc.close();
    if (error instanceof ServerError && error.status === 404) {
      show('waiting'); // the events channel says when it starts
    } else if (error instanceof ServerError && error.code === 'bad_stream_id') {
      show('notfound');
    } else if (error instanceof ServerError && (error.status === 429 || error.status === 503)) {
      retryWhenFree(error.retryAfterS);
    } else {
      scheduleRetry();
    }
  } finally {
    state.connecting = false;
  }
}

/**
 * A connection that failed (the network changed, a NAT forgot us): restart ICE on the
 * same session once, and if that cannot be done or does not connect in RESTART_MS,
 * start a new session.
 */
async function recover(pc) {
  if (pc !== state.pc || state.restarting) return;
  if (!state.restarted) {
    state.restarted = true;
    state.restarting = true;
    const restarted = await restartIce(pc, state.session).catch(() => false);
    state.restarting = false;
    if (pc !== state.pc) return;
    if (restarted) {
      clearTimeout(state.dropTimer);
      state.dropTimer = setTimeout(() => {
        if (pc === state.pc && pc.connectionState !== 'connected') recover(pc);
      }, RESTART_MS);
      return;
    }
  }
  drop();
  scheduleRetry();
}

/**
 * ICE restart over PATCH (RFC 9725 §4.4.1): our new credentials and candidates go to
 * the session, the server's new ones come back and replace those of its answer. The
 * DTLS association and the session stay. False if the server would not restart.
 */
async function restartIce(pc, session) {
  pc.restartIce();
  await pc.setLocalDescription(await pc.createOffer({iceRestart: true}));
  await iceGathered(pc);
  const lines = pc.localDescription.sdp.split(/\r?\n/);
  const first = (prefix) => lines.find((line) => line.startsWith(prefix));
  const fragment = [
    first('a=ice-ufrag:'), first('a=ice-pwd:'), first('m='), first('a=mid:'),
    ...lines.filter((line) => line.startsWith('a=candidate:')), 'a=end-of-candidates', '',
  ].join('\r\n');
  const response = await fetch(session, {
    method: 'PATCH',
    headers: {'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': '*'},
    body: fragment,
  });
  if (response.status !== 200 || pc.signalingState !== 'have-local-offer') return false;
  const theirs = (await response.text()).split(/\r?\n/);
  const ufrag = theirs.find((line) => line.startsWith('a=ice-ufrag:'));
  const pwd = theirs.find((line) => line.startsWith('a=ice-pwd:'));
  const candidates = theirs.filter((line) => line.startsWith('a=candidate:'));
  if (!ufrag || !pwd) return false;
  // The answer as before, with the new credentials and the candidates (BUNDLE: in the
  // first media section).
  let placed = false;
  const answer = pc.remoteDescription.sdp.split(/\r?\n/)
    .filter((line) => !line.startsWith('a=candidate:') && line !== 'a=end-of-candidates')
    .flatMap((line) => {
      if (line.startsWith('a=ice-ufrag:')) return [ufrag];
      if (!line.startsWith('a=ice-pwd:')) return [line];
      if (placed) return [pwd];
      placed = true;
      return [pwd, ...candidates, 'a=end-of-candidates'];
    });
  await pc.setRemoteDescription({type: 'answer', sdp: answer.join('\r\n')});
  return true;
}

/**
 * The quality menu: the live session switches at the new size's next keyframe (no
 * new connection); the page's link and the next session keep the choice. A server
 * that cannot switch it (one size only, an older version) gets a new session.
 */
async function chooseQuality() {
  const quality = $('quality').value;
  const page = new URL(location.href);
  for (const url of [whepUrl, page]) {
    if (quality === 'auto') url.searchParams.delete('quality');
    else url.searchParams.set('quality', quality);
  }
  history.replaceState(null, '', page);
  const {pc, session} = state;
  if (!pc || !session) return;
  const response = await fetch(session, {
    method: 'PATCH',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({quality}),
  }).catch(() => null);
  if (response && response.ok) return;
  if (pc === state.pc) {
    drop();
    connect();
  }
}

function drop() {
  const pc = state.pc;
  state.pc = null;
  if (pc) pc.close();
  hangUp(state.session);
  state.session = null;
}

function scheduleRetry() {
  if (!state.playing || state.streamState === 'ended') return;
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(connect, RETRY_MS[Math.min(state.attempt++, RETRY_MS.length - 1)]);
}

/** Busy: say so, and try again no sooner than the server asked, never giving up. */
function retryWhenFree(retryAfterS) {
  const backoffS = Math.min(BUSY_DEFAULT_S * 2 ** state.busyAttempt++, BUSY_MAX_S);
  const waitS = Math.max(retryAfterS ?? 0, backoffS) * (1 + BUSY_JITTER * Math.random());
  show('busy');
  state.busy = true;
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(() => {
    state.busy = false;
    connect();
  }, waitS * 1000);
}

/** The presenter's camera or microphone is off: say why the picture is black or silent. */
function showPresenterMedia(event) {
  const off = [
    ...(event.camera ? [] : ['turned the camera off']),
    ...(event.microphone ? [] : ['muted the microphone']),
  ];
  $('presenter-media').textContent = off.length ? `The presenter ${off.join(' and ')}.` : '';
  $('presenter-media').hidden = !off.length;
}

function onEvent(event) {
  if (event.type === 'presenter') showPresenterMedia(event);
  if (event.type !== 'state') return;
  if (event.state === 'ended' || event.state === 'offline') $('presenter-media').hidden = true;
  state.streamState = event.state;
  if (event.state === 'ended') {
    drop();
    clearTimeout(state.retryTimer);
    state.busy = false;
    show('ended');
  } else if (event.state === 'offline') {
    if (!state.pc) show($('status').dataset.state === 'ended' ? 'ended' : 'waiting');
  } else if (event.state === 'reconnecting') {
    show('reconnecting');
    // A camera says why (never its address or credentials): "the camera closed the connection".
    if (event.problem) $('status').textContent = `Reconnecting: ${event.problem}…`;
    connect();
  } else {
    // waiting or live: a broadcast exists; watch it (again).
    if (state.pc) show(event.state === 'live' ? 'live' : 'waiting');
    else connect();
  }
}

async function updateStats() {
  if (!state.pc || $('stats').hidden) return;
  const stats = await receivingVideo(state.pc, state);
  if (!stats) return;
  $('stats').textContent = [
    describe(stats),
    `loss ${stats.lossPercent.toFixed(1)} %`,
    `delay ≈ ${stats.delayMs} ms`,
  ].join('\n');
}

function togglePlay() {
  state.playing = !state.playing;
  $('play').textContent = state.playing ? 'Stop' : 'Play';
  $('play').setAttribute('aria-pressed', String(state.playing));
  if (state.playing) {
    show('connecting');
    connect();
  } else {
    drop();
    clearTimeout(state.retryTimer);
    state.busy = false;
    show('stopped');
  }
}

function toggleMute() {
  const player = $('player');
  player.muted = !player.muted;
  $('unmute').textContent = player.muted ? 'Unmute' : 'Mute';
  if (!player.muted) player.play().catch(() => {});
}

function toggleFullscreen() {
  if (document.fullscreenElement) {
    document.exitFullscreen();
  } else {
    const wrap = $('player-wrap');
    (wrap.requestFullscreen ? wrap.requestFullscreen() : $('player').webkitEnterFullscreen()).catch?.(() => {});
  }
}

function toggleStats() {
  const stats = $('stats');
  stats.hidden = !stats.hidden;
  $('show-stats').setAttribute('aria-pressed', String(!stats.hidden));
  updateStats();
}

$('play').addEventListener('click', togglePlay);
$('unmute').addEventListener('click', toggleMute);
$('fullscreen').addEventListener('click', toggleFullscreen);
$('show-stats').addEventListener('click', toggleStats);
$('quality').value = QUALITIES.includes(askedQuality) ? askedQuality : 'auto';
$('quality').addEventListener('change', chooseQuality);
// Page open (navigation start) to the first frame shown, for people and for the tests.
if ($('player').requestVideoFrameCallback) {
  $('player').requestVideoFrameCallback(() => {
    window.firstFrameMs = Math.round(performance.now());
  });
} else {
  $('player').addEventListener('loadeddata', () => {
    window.firstFrameMs = Math.round(performance.now());
  }, {once: true});
}
window.addEventListener('pagehide', drop);
state.statsTimer = setInterval(updateStats, STATS_INTERVAL_MS);
show('connecting');
const events = subscribe(streamId, onEvent, () => {}, token);
// Tell the operator what this viewer actually sees (resolution, fps, freezes, delay).
setInterval(async () => {
  if (!state.pc || state.pc.connectionState !== 'connected' || !state.session) return;
  const report = await qualityReport(state.pc).catch(() => null);
  if (report) events.send({...report, session: new URL(state.session).pathname.split('/').pop()});
}, QUALITY_REPORT_MS);
connect();
