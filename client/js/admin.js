// Operator console: live streams with thumbnails, recording, cameras, recordings.
// Everything goes through the admin API with the key kept in this tab's session storage;
// stream changes come over /ws, the lists are read again every few seconds.

const $ = (id) => document.getElementById(id);
const KEY = 'broadcast.admin.key';
const REFRESH_MS = 5000;
const THUMBNAIL_WIDTH = 320;
const MAX_SUBSCRIPTIONS = 16; // the server's per-socket limit

const state = {
  key: sessionStorage.getItem(KEY) || '', timer: null, socket: null,
  subscribed: new Set(), thumbnails: new Map(), streams: new Map(),
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function say(text) {
  $('admin-status').textContent = text;
}

async function api(method, path, body) {
  const headers = state.key ? {Authorization: `Bearer ${state.key}`} : {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.ok) {
    return response.headers.get('Content-Type')?.startsWith('application/json')
      ? response.json() : response.blob();
  }
  const error = await response.json().catch(() => ({}));
  throw new ApiError(response.status, error.error, error.message || response.statusText);
}

/** A failed call: a wrong key signs out, anything else is said and the page goes on. */
function failed(error) {
  if (error instanceof ApiError && error.status === 401) {
    signOut('That admin key is not right. Enter the key from <auth><admin_key>.');
  } else if (error instanceof ApiError && error.code === 'admin_disabled') {
    signOut('The admin API is off on this server: set <admin_key> in <auth> first.');
  } else {
    say(error.message);
  }
}

function signOut(message) {
  state.key = '';
  sessionStorage.removeItem(KEY);
  clearInterval(state.timer);
  if (state.socket) state.socket.close();
  state.socket = null;
  $('console').hidden = true;
  $('sign-in-form').hidden = false;
  $('connection').textContent = 'Signed out';
  say(message);
  $('admin-key').focus();
}

async function signIn(event) {
  event.preventDefault();
  state.key = $('admin-key').value.trim();
  try {
    await api('GET', '/api/streams');
  } catch (error) {
    failed(error);
    return;
  }
  sessionStorage.setItem(KEY, state.key);
  $('admin-key').value = '';
  start();
}

function start() {
  $('sign-in-form').hidden = true;
  $('console').hidden = false;
  $('connection').textContent = 'Signed in';
  say('');
  openEvents();
  refresh();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
}

async function refresh() {
  try {
    const {streams} = await api('GET', '/api/streams');
    await showStreams(streams);
    showRecordings(await api('GET', '/api/recordings'));
  } catch (error) {
    failed(error);
  }
}

// --- streams -----------------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(className, text, label, onClick) {
  const node = element('button', className, text);
  node.type = 'button';
  node.setAttribute('aria-label', label);
  node.addEventListener('click', onClick);
  return node;
}

function streamCard(id) {
  const card = element('li', 'card');
  card.dataset.stream = id;
  const thumb = element('img', 'thumb');
  thumb.alt = `Latest picture of ${id}`;
  thumb.width = THUMBNAIL_WIDTH;
  thumb.height = THUMBNAIL_WIDTH * 9 / 16;
  card.append(thumb, element('p', 'no-picture', 'No picture yet'));
  card.append(element('h3', 'name', id));
  const facts = element('dl', 'facts');
  for (const [field, label] of [
    ['state', 'State'], ['source', 'Source'], ['codecs', 'Codecs'],
    ['resolution', 'Size'], ['bitrate', 'Bitrate in'], ['viewers', 'Viewers'],
    ['recording-state', 'Recording'],
  ]) {
    facts.append(element('dt', '', label), element('dd', field, '–'));
  }
  card.append(facts);
  const actions = element('div', 'buttons');
  actions.append(
    button('record', 'Record', `Record ${id}`, () => act('POST', `/api/streams/${id}/recording`, 'Recording started.')),
    button('stop-recording', 'Stop recording', `Stop recording ${id}`, () => act('DELETE', `/api/streams/${id}/recording`, 'Recording stopped.')),
    button('end-stream', 'End stream', `End ${id}`, () => act('DELETE', `/api/streams/${id}`, 'Stream ended.')),
    button('remove-camera', 'Remove camera', `Remove camera ${id}`, () => act('DELETE', `/api/cameras/${id}`, 'Camera removed.')),
  );
  card.append(actions);
  const details = element('details', 'viewer-list');
  details.append(element('summary', '', 'Viewers'), element('ul', 'viewer-sessions'));
  card.append(details);
  return card;
}

async function showStreams(streams) {
  const seen = new Set();
  for (const stream of streams) {
    seen.add(stream.id);
    let card = $('streams').querySelector(`[data-stream="${CSS.escape(stream.id)}"]`);
    if (!card) {
      card = streamCard(stream.id);
      $('streams').append(card);
    }
    state.streams.set(stream.id, stream);
    fillCard(card, stream);
    subscribe(stream.id);
    await showViewers(card, stream.id);
    thumbnail(card, stream.id);
  }
  for (const card of [...$('streams').children]) {
    if (!seen.has(card.dataset.stream)) {
      dropThumbnail(card.dataset.stream);
      state.streams.delete(card.dataset.stream);
      card.remove();
    }
  }
  $('no-streams').hidden = streams.length > 0;
}

function fillCard(card, stream) {
  const set = (field, text) => { card.querySelector(`.${field}`).textContent = text; };
  set('state', stream.problem ? `${stream.state}: ${stream.problem}` : stream.state);
  set('source', stream.camera ? `camera ${stream.camera}` : (stream.source || '–'));
  set('codecs', stream.codecs.join(', ') || '–');
  set('resolution', stream.resolution || '–');
  set('bitrate', `${stream.bitrate_in_kbps} kbit/s`);
  set('viewers', String(stream.viewers));
  const recording = stream.recording;
  set('recording-state', recording
    ? (recording.state === 'failed' ? `failed: ${recording.reason}` : `recording ${recording.file || ''}`)
    : 'off');
  const recordingNow = recording?.state === 'recording';
  card.querySelector('.record').hidden = recordingNow;
  card.querySelector('.stop-recording').hidden = !recordingNow;
  card.querySelector('.remove-camera').hidden = stream.source !== 'rtsp';
}

async function showViewers(card, id) {
  const list = card.querySelector('.viewer-sessions');
  let sessions = [];
  try {
    sessions = (await api('GET', `/api/streams/${id}`)).viewer_sessions;
  } catch (error) {
    return; // ended meanwhile
  }
  list.replaceChildren(...sessions.map((viewer) => {
    const item = element('li', '', `${viewer.address || '?'} · ${viewer.bitrate_out_kbps} kbit/s`
      + ` · loss ${viewer.loss_percent} %${viewer.layer ? ` · layer ${viewer.layer}` : ''} `);
    item.dataset.viewer = viewer.id;
    item.append(button('kick', 'Disconnect', `Disconnect viewer ${viewer.address || viewer.id}`,
      () => act('DELETE', `/api/streams/${id}/viewers/${viewer.id}`, 'Viewer disconnected.')));
    return item;
  }));
}

/** The stream's latest keyframe as a picture, fetched with the key (an <img> cannot
 * send it), a placeholder until there is one. */
async function thumbnail(card, id) {
  try {
    const blob = await api('GET', `/api/streams/${id}/snapshot.jpg?width=${THUMBNAIL_WIDTH}`);
    const url = URL.createObjectURL(blob);
    dropThumbnail(id);
    state.thumbnails.set(id, url);
    card.querySelector('.thumb').src = url;
    card.querySelector('.no-picture').hidden = true;
  } catch (error) {
    card.querySelector('.no-picture').hidden = false;
  }
}

function dropThumbnail(id) {
  const url = state.thumbnails.get(id);
  if (url) URL.revokeObjectURL(url);
  state.thumbnails.delete(id);
}

async function act(method, path, done) {
  try {
    await api(method, path);
    say(done);
  } catch (error) {
    failed(error);
  }
  refresh();
}

async function addCamera(event) {
  event.preventDefault();
  try {
    await api('POST', '/api/cameras', {
      id: $('camera-id').value.trim(),
      url: $('camera-url').value.trim(),
      always_on: $('camera-always-on').checked,
      record: $('camera-record').checked,
    });
    say(`Camera ${$('camera-id').value.trim()} added.`);
    $('camera-form').reset();
  } catch (error) {
    failed(error);
  }
  refresh();
}

// --- live updates ------------------------------------------------------------------

function openEvents() {
  if (state.socket) return;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(`${scheme}//${location.host}/ws`);
  state.socket = socket;
  state.subscribed.clear();
  socket.addEventListener('open', () => {
    for (const id of state.streams.keys()) subscribe(id);
  });
  socket.addEventListener('message', (message) => onEvent(JSON.parse(message.data)));
  socket.addEventListener('close', () => {
    if (state.socket !== socket) return;
    state.socket = null;
    if (state.key) setTimeout(openEvents, 2000);
  });
}

function subscribe(id) {
  const socket = state.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN || state.subscribed.has(id)) return;
  if (state.subscribed.size >= MAX_SUBSCRIPTIONS) return; // the timer keeps the rest fresh
  state.subscribed.add(id);
  socket.send(JSON.stringify({type: 'subscribe', stream: id}));
}

function onEvent(event) {
  const card = event.stream
    && $('streams').querySelector(`[data-stream="${CSS.escape(event.stream)}"]`);
  if (!card) return;
  if (event.type === 'viewers') {
    card.querySelector('.viewers').textContent = String(event.count);
    showViewers(card, event.stream);
  } else if (event.type === 'state') {
    card.querySelector('.state').textContent = event.problem
      ? `${event.state}: ${event.problem}` : event.state;
    if (event.state === 'ended' || event.state === 'offline') refresh();
  } else if (event.type === 'recording') {
    refresh();
  }
}

// --- recordings --------------------------------------------------------------------

function showRecordings(recordings) {
  $('recordings').replaceChildren(...recordings.map((recording) => {
    const item = element('li', 'recording');
    item.dataset.file = recording.file;
    const duration = recording.duration == null ? '?' : `${recording.duration.toFixed(1)} s`;
    const size = `${(recording.size / 1e6).toFixed(1)} MB`;
    item.append(
      element('span', 'file', recording.file),
      element('span', 'facts-line',
        `${recording.stream} · ${recording.start} · ${duration} · ${size} · ${recording.state}`
        + ` · ${recording.codecs.join(', ')}`),
    );
    const actions = element('div', 'buttons');
    actions.append(
      button('play', 'Play', `Play ${recording.file}`, () => play(recording)),
      button('delete-recording', 'Delete', `Delete ${recording.file}`,
        () => act('DELETE', `/api/recordings/${recording.file}`, 'Recording deleted.')),
    );
    actions.querySelector('.delete-recording').disabled = recording.state === 'recording';
    item.append(actions);
    return item;
  }));
  $('no-recordings').hidden = recordings.length > 0;
}

function play(recording) {
  const player = $('recording-player');
  player.hidden = false;
  player.src = recording.url; // signed by the server: a <video> cannot send the key
  player.play().catch(() => {});
}

$('sign-in-form').addEventListener('submit', signIn);
$('camera-form').addEventListener('submit', addCamera);
if (state.key) {
  api('GET', '/api/streams').then(start, failed);
} else {
  $('sign-in-form').hidden = false;
}
window.admin = state; // for people debugging, and for the end-to-end tests
