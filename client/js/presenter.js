// Presenter page: camera (or screen) → WHIP, share link, live status and viewer count.

import qrcode from '../vendor/qrcode-generator.mjs';
import {subscribe} from './events.js';
import {
  ServerError, describe, hangUp, iceServers, negotiate, sendingVideo,
} from './webrtc.js';

const $ = (id) => document.getElementById(id);
const STATS_INTERVAL_MS = 1000;
// The server keeps a dropped broadcast's viewers this long (reconnect_grace_s).
const RECONNECT_WINDOW_MS = 30000;
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000];
const DISCONNECTED_MS = 4000;
const SAVED = 'broadcast.presenter';
// Simulcast from a camera of at least 960x540: full, half and quarter size, so each
// viewer can get what its network carries. A server that does not take simulcast
// answers without it, and the browser sends the first layer alone.
const SIMULCAST_MIN = {width: 960, height: 540};
const SIMULCAST_LAYERS = [
  {rid: 'h'},
  {rid: 'm', scaleResolutionDownBy: 2, maxBitrate: 800000},
  {rid: 'l', scaleResolutionDownBy: 4, maxBitrate: 250000},
];

const state = {
  media: null, pc: null, session: null, streamId: null, events: null, dropTimer: null,
  statsTimer: null, live: false, stopping: false, limitedFor: 0,
  microphone: true, camera: true,
  key: new URLSearchParams(location.search).get('key') || sessionStorage.getItem(SAVED + '.key') || '',
};

function setStatus(text, live = false) {
  $('status').textContent = text;
  $('status').classList.toggle('live', live);
}

function showMessage(text) {
  $('message').textContent = text;
}

/** Camera errors in words a presenter can act on. */
function mediaErrorMessage(error) {
  switch (error.name) {
    case 'NotAllowedError': return 'Camera access was denied. Allow it in the address bar and press Start again.';
    case 'NotFoundError': return 'No camera or microphone was found. Connect one and press Start again.';
    case 'NotReadableError': return 'The camera is busy in another application. Close it and press Start again.';
    case 'OverconstrainedError': return 'The chosen camera cannot be used with these settings. Pick another one.';
    default: return `The camera could not be opened: ${error.message || error.name}.`;
  }
}

function serverErrorMessage(error) {
  if (error instanceof ServerError) {
    if (error.status === 401) return 'This server needs a publish key. Enter it and press Start.';
    if (error.status === 409) return 'This stream is already being broadcast from somewhere else.';
    return `The server refused the broadcast: ${error.message}`;
  }
  return 'The server cannot be reached. Check your connection and press Start again.';
}

async function openMedia() {
  const screen = $('source-screen').checked;
  const cameraId = $('camera-select').value;
  const micId = $('mic-select').value;
  const audio = micId ? {deviceId: {exact: micId}} : true;
  // Ask for up to 1080p and take what the camera gives: its native size, not a guess.
  const media = screen
    ? await navigator.mediaDevices.getDisplayMedia({video: {frameRate: 30}, audio: true, systemAudio: 'include'})
    : await navigator.mediaDevices.getUserMedia({
      video: {
        ...(cameraId ? {deviceId: {exact: cameraId}} : {}),
        width: {ideal: 1920}, height: {ideal: 1080}, frameRate: {ideal: 30},
      },
      audio,
    });
  for (const track of media.getVideoTracks()) {
    // Keep resolution (camera) or keep detail (screen) when the encoder is squeezed.
    track.contentHint = screen ? 'text' : 'detail';
  }
  return media;
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [kind, select] of [['videoinput', $('camera-select')], ['audioinput', $('mic-select')]]) {
    // The device chosen now, else the one chosen on an earlier visit if it is still there.
    const chosen = select.value || localStorage.getItem(`${SAVED}.${select.id}`) || '';
    select.replaceChildren(select.options[0]);
    devices.filter((d) => d.kind === kind && d.deviceId).forEach((d, i) => {
      select.add(new Option(d.label || `${kind === 'videoinput' ? 'Camera' : 'Microphone'} ${i + 1}`, d.deviceId));
    });
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : '';
  }
}

/** The camera needs a secure page: say so before anything else, and how to get one. */
function needsHttps() {
  if (window.isSecureContext && navigator.mediaDevices?.getUserMedia) return false;
  $('needs-https').textContent = 'The camera and microphone work only on a secure page: '
    + `open this page with https:// (or on localhost), not ${location.protocol}//${location.host}. `
    + 'To get a trusted certificate, install the server with: '
    + 'sudo ./install.sh --domain tv.example.org --letsencrypt you@example.org';
  $('needs-https').hidden = false;
  $('start').disabled = true;
  return true;
}

/** Camera off or microphone muted: the broadcast goes on with black or silence, and
 * viewers' pages say why. */
function applyMediaState() {
  for (const track of state.media?.getTracks() || []) {
    track.enabled = track.kind === 'video' ? state.camera : state.microphone;
  }
  $('mute-mic').setAttribute('aria-pressed', String(!state.microphone));
  $('mute-mic').textContent = state.microphone ? 'Mute microphone' : 'Unmute microphone';
  $('camera-off').setAttribute('aria-pressed', String(!state.camera));
  $('camera-off').textContent = state.camera ? 'Turn camera off' : 'Turn camera on';
  sendMediaState();
}

function sendMediaState() {
  if (!state.events || !state.session) return;
  state.events.send({
    type: 'presenter', session: new URL(state.session).pathname.split('/').pop(),
    camera: state.camera, microphone: state.microphone,
  });
}

function toggleMicrophone() {
  state.microphone = !state.microphone;
  applyMediaState();
}

function toggleCamera() {
  state.camera = !state.camera;
  applyMediaState();
}

/** Whether to send simulcast layers: a camera (not a screen) big enough to halve twice. */
function sendsLayers(track) {
  const {width = 0, height = 0} = track.getSettings();
  return !$('source-screen').checked
    && width >= SIMULCAST_MIN.width && height >= SIMULCAST_MIN.height;
}

async function connect() {
  const url = state.streamId ? `/whip/${encodeURIComponent(state.streamId)}` : '/whip';
  const pc = new RTCPeerConnection({iceServers: await iceServers(new URL(url, location.href).href)});
  for (const track of state.media.getTracks()) {
    const init = {direction: 'sendonly', streams: [state.media]};
    if (track.kind === 'video' && sendsLayers(track)) init.sendEncodings = SIMULCAST_LAYERS;
    const {sender} = pc.addTransceiver(track, init);
    if (track.kind === 'video') {
      const parameters = sender.getParameters();
      parameters.degradationPreference = 'maintain-resolution';
      await sender.setParameters(parameters).catch(() => {});
    }
  }
  try {
    ({session: state.session, watch: state.watchLink} = await negotiate(
      pc, new URL(url, location.href).href, state.key));
  } catch (error) {
    pc.close();
    throw error;
  }
  state.pc = pc;
  state.streamId = new URL(state.session).pathname.split('/')[2];
  sessionStorage.setItem(SAVED + '.stream', state.streamId);
  sendMediaState(); // a new session starts with both on at the server
  pc.addEventListener('connectionstatechange', () => onConnectionState(pc));
}

function onConnectionState(pc) {
  if (pc !== state.pc || state.stopping) return;
  clearTimeout(state.dropTimer);
  if (pc.connectionState === 'connected') {
    state.live = true;
    setStatus('LIVE', true);
    showMessage('');
  } else if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
    reconnect();
  } else if (pc.connectionState === 'disconnected') {
    // Browsers call a connection failed only after ~30 s; the server keeps viewers
    // waiting for us only so long. A few seconds of silence is enough to start over.
    setStatus('Connection interrupted…');
    state.dropTimer = setTimeout(() => {
      if (pc === state.pc && pc.connectionState === 'disconnected') reconnect();
    }, DISCONNECTED_MS);
  }
}

/** The network dropped: publish again under the same id while viewers wait for us. */
async function reconnect() {
  const pc = state.pc;
  state.pc = null;
  if (pc) pc.close();
  setStatus('Reconnecting…');
  const deadline = Date.now() + RECONNECT_WINDOW_MS;
  for (let attempt = 0; Date.now() < deadline && !state.stopping; attempt++) {
    await new Promise((r) => setTimeout(r, RECONNECT_DELAYS_MS[Math.min(attempt, RECONNECT_DELAYS_MS.length - 1)]));
    try {
      await connect();
      return;
    } catch (error) {
      // 409: the server has not noticed yet that our old connection is gone; retry.
      if (error instanceof ServerError && error.status !== 409) {
        showMessage(serverErrorMessage(error));
        break;
      }
    }
  }
  if (!state.stopping) {
    showMessage('The connection to the server was lost and could not be restored.');
    await stop();
  }
}

function showSharing() {
  // The server's link may carry a view token (private viewing).
  const link = state.watchLink || new URL(`/watch/${state.streamId}`, location.href).href;
  $('share-link').value = link;
  const qr = qrcode(0, 'M');
  qr.addData(link);
  qr.make();
  $('qr').src = qr.createDataURL(4, 8);
  $('embed').value = `<iframe src="${link}" width="640" height="360" allow="autoplay; fullscreen" allowfullscreen></iframe>`;
  $('sharing').hidden = false;
  if (state.events) state.events.close();
  state.events = subscribe(state.streamId, (event) => {
    if (event.type === 'viewers') $('viewer-count').textContent = String(event.count);
  }, (up) => { if (up) sendMediaState(); }, new URL(link).searchParams.get('token'));
}

async function updateStats() {
  if (!state.pc || !state.live) return;
  const stats = await sendingVideo(state.pc, state);
  if (!stats) return;
  setStatus(`LIVE · ${describe(stats)}`, true);
  const limited = stats.limitation === 'cpu' || stats.limitation === 'bandwidth';
  state.limitedFor = limited ? state.limitedFor + 1 : 0;
  const warning = $('quality-warning');
  warning.hidden = state.limitedFor < 3;
  if (!warning.hidden) {
    const cause = stats.limitation === 'cpu' ? 'Your computer is too busy' : 'Your upload is too slow';
    warning.textContent = `${cause}: viewers receive ${stats.width}×${stats.height}.`;
  }
}

async function start() {
  showMessage('');
  if (!$('key-row').hidden) state.key = $('publish-key').value.trim();
  $('start').disabled = true;
  state.stopping = false;
  try {
    state.media = await openMedia();
  } catch (error) {
    showMessage(mediaErrorMessage(error));
    $('start').disabled = false;
    return;
  }
  $('preview').srcObject = state.media;
  listDevices().catch(() => {});
  setStatus('Connecting…');
  try {
    await connect();
  } catch (error) {
    if (error instanceof ServerError && error.status === 401) {
      $('key-row').hidden = false;
      $('publish-key').focus();
    }
    showMessage(serverErrorMessage(error));
    setStatus('Not live');
    stopMedia();
    $('start').disabled = false;
    return;
  }
  if (state.key) sessionStorage.setItem(SAVED + '.key', state.key);
  $('stop').disabled = false;
  $('mute-mic').disabled = false;
  $('camera-off').disabled = false;
  applyMediaState();
  showSharing();
  state.statsTimer = setInterval(updateStats, STATS_INTERVAL_MS);
  for (const track of state.media.getVideoTracks()) {
    track.addEventListener('ended', () => stop()); // e.g. the browser's "Stop sharing"
  }
}

function stopMedia() {
  if (state.media) state.media.getTracks().forEach((t) => t.stop());
  $('mute-mic').disabled = true;
  $('camera-off').disabled = true;
  state.media = null;
  $('preview').srcObject = null;
}

async function stop() {
  state.stopping = true;
  state.camera = state.microphone = true; // the next broadcast starts with both on
  clearInterval(state.statsTimer);
  const session = state.session;
  state.session = null;
  state.live = false;
  // DELETE first: it ends the broadcast. Closing the connection first would look like
  // a dropped network to the server, and viewers would wait for a reconnect.
  await hangUp(session);
  if (state.pc) state.pc.close();
  state.pc = null;
  stopMedia();
  if (state.events) state.events.close();
  state.events = null;
  state.streamId = null;
  state.watchLink = null;
  sessionStorage.removeItem(SAVED + '.stream');
  setStatus('Not live');
  $('quality-warning').hidden = true;
  $('stop').disabled = true;
  $('start').disabled = false;
}

async function copyLink() {
  const link = $('share-link').value;
  try {
    await navigator.clipboard.writeText(link);
  } catch (e) {
    $('share-link').select(); // older browsers, or no clipboard permission
    document.execCommand('copy');
  }
  $('copy-link').textContent = 'Copied';
  setTimeout(() => { $('copy-link').textContent = 'Copy'; }, 1500);
}

async function switchDevice() {
  if (!state.pc || !state.media || $('source-screen').checked) return;
  try {
    const media = await openMedia();
    for (const sender of state.pc.getSenders()) {
      const track = media.getTracks().find((t) => sender.track && t.kind === sender.track.kind);
      if (track) await sender.replaceTrack(track);
    }
    state.media.getTracks().forEach((t) => t.stop());
    state.media = media;
    $('preview').srcObject = media;
    applyMediaState(); // the new devices stay off if they were
  } catch (error) {
    showMessage(mediaErrorMessage(error));
  }
}

$('start').addEventListener('click', start);
$('stop').addEventListener('click', stop);
$('copy-link').addEventListener('click', copyLink);
for (const select of [$('camera-select'), $('mic-select')]) {
  select.addEventListener('change', () => {
    localStorage.setItem(`${SAVED}.${select.id}`, select.value);
    switchDevice();
  });
}
$('mute-mic').addEventListener('click', toggleMicrophone);
$('camera-off').addEventListener('click', toggleCamera);
if (state.key) $('publish-key').value = state.key;
// A reload keeps the stream id: viewers stay on the same link during the grace period.
state.streamId = sessionStorage.getItem(SAVED + '.stream');
// Closing the page closes the connection at once (DTLS close), so the server knows.
window.addEventListener('pagehide', () => { if (state.pc) state.pc.close(); });
if (!needsHttps()) listDevices().catch(() => {});
window.presenter = state; // for people debugging, and for the end-to-end tests
