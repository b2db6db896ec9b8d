// Connection check: which paths from this browser to the server work, in plain words.

import {subscribe} from './events.js';
import {hangUp, iceServers, negotiate, selectedPair} from './webrtc.js';

const $ = (id) => document.getElementById(id);
const CONNECT_TIMEOUT_MS = 8000;

function report(id, ok, text, fix = '') {
  const item = document.createElement('li');
  item.id = id;
  item.dataset.ok = String(ok);
  item.className = ok ? 'ok' : 'problem';
  item.textContent = `${ok ? '✔' : '✘'} ${text}${fix ? ` — ${fix}` : ''}`;
  $('results').append(item);
  return ok;
}

/** Connect a media-less session under `policy`; the selected pair, or null. */
async function probe(servers, policy) {
  const pc = new RTCPeerConnection({iceServers: servers, iceTransportPolicy: policy});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  let session = null;
  try {
    ({session} = await negotiate(pc, new URL('/check/ice', location.href).href));
    const connected = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), CONNECT_TIMEOUT_MS);
      const check = () => {
        if (pc.connectionState === 'connected') { clearTimeout(timer); resolve(true); }
        if (pc.connectionState === 'failed') { clearTimeout(timer); resolve(false); }
      };
      pc.addEventListener('connectionstatechange', check);
      check();
    });
    if (!connected) return null;
    const selected = selectedPair(await pc.getStats());
    if (!selected) return {local: 'unknown', remote: 'unknown', protocol: 'udp'};
    const {local, remote} = selected;
    return {local: local.candidateType, remote: remote.candidateType, protocol: local.protocol};
  } catch (error) {
    return null;
  } finally {
    pc.close();
    hangUp(session);
  }
}

function websocketWorks() {
  return new Promise((resolve) => {
    const timer = setTimeout(() => { events.close(); resolve(false); }, 5000);
    const events = subscribe('connection-check', () => {}, (up) => {
      if (up) { clearTimeout(timer); events.close(); resolve(true); }
    });
  });
}

async function run() {
  $('results').replaceChildren();
  $('again').disabled = true;
  $('status').textContent = 'Checking…';
  let problems = 0;
  const fail = (...args) => { problems += 1; return report(...args); };

  if (window.isSecureContext) {
    report('camera', true, 'The camera may be used from this page (secure context).');
  } else {
    fail('camera', false, 'Browsers allow the camera only over HTTPS here',
      'open this server by its https:// address');
  }
  if (await websocketWorks()) {
    report('events', true, 'Live events (WebSocket) reach this browser.');
  } else {
    fail('events', false, 'Live events (WebSocket) do not get through',
      'a proxy must pass WebSocket upgrades for /ws (see deploy/nginx-broadcast.conf)');
  }
  const servers = await iceServers(new URL('/check/ice', location.href).href);
  const direct = await probe(servers, 'all');
  if (direct) {
    const how = direct.local === 'relay' ? 'through the TURN relay' : 'directly over UDP';
    report('udp', true, `Media connects ${how} (${direct.local} → ${direct.remote}).`);
  } else {
    fail('udp', false, 'Media cannot connect',
      'open the media UDP ports in the firewall, check <ip> (broadcast doctor), or add a TURN server');
  }
  const turn = servers.filter((s) => String(s.urls).startsWith('turn'));
  if (!turn.length) {
    report('turn', !!direct, 'No TURN server is configured',
      direct ? 'fine while UDP works; viewers behind strict firewalls need one'
        : 'configure <turn_server> and <turn_secret> (deploy/coturn.conf)');
  } else if (await probe(servers, 'relay')) {
    report('turn', true, 'The TURN relay works (for viewers whose UDP is blocked).');
  } else {
    fail('turn', false, 'The TURN relay does not answer',
      'check coturn is running and its static-auth-secret matches <turn_secret>');
  }
  report('tcp', true, 'This server takes media over UDP; where UDP is blocked, TURN over TCP/TLS carries it.');
  $('status').textContent = problems ? `${problems} problem${problems > 1 ? 's' : ''}` : 'All good';
  $('status').classList.toggle('good', problems === 0);
  $('status').dataset.done = 'true';
  $('again').disabled = false;
}

$('again').addEventListener('click', run);
run();
