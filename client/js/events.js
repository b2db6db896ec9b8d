// Live events of one stream over /ws, reconnecting by itself (docs/ARCHITECTURE.md).

const RETRY_MS = [500, 1000, 2000, 4000, 8000];

/**
 * Call onEvent({type: 'state'|'viewers', ...}) for `streamId` until close().
 * onConnection(true|false) tells whether the events channel is up.
 */
export function subscribe(streamId, onEvent, onConnection = () => {}, token = null) {
  let socket = null;
  let attempt = 0;
  let closed = false;
  let timer = null;

  function connect() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    socket = new WebSocket(`${scheme}//${location.host}/ws`);
    socket.addEventListener('open', () => {
      attempt = 0;
      onConnection(true);
      socket.send(JSON.stringify({type: 'subscribe', stream: streamId, ...(token ? {token} : {})}));
    });
    socket.addEventListener('message', (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (e) {
        return;
      }
      if (event.stream === streamId) onEvent(event);
    });
    socket.addEventListener('close', () => {
      onConnection(false);
      if (closed) return;
      timer = setTimeout(connect, RETRY_MS[Math.min(attempt++, RETRY_MS.length - 1)]);
    });
  }

  connect();
  return {
    /** Send a message now if the channel is up (reports are best effort). */
    send(message) {
      if (socket && socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({stream: streamId, ...message}));
      }
    },
    close() {
      closed = true;
      clearTimeout(timer);
      if (socket) socket.close();
    },
  };
}
