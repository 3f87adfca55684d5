// wirthforge-client.js: the browser client of the WIRTHFORGE lifeline (WF-TECH-003).
//
// An ES module with no dependencies, served by the server at /static/wirthforge-client.js.
// It keeps one WebSocket to the server alive: a connection state machine, full-jitter
// exponential backoff (no reconnect after a close 1000), answers to heartbeats, a watchdog
// that treats 2 s of silence as a dead server (suspended while the tab is hidden, since
// browsers throttle hidden tabs; becoming visible checks at once instead), and a resume on
// every reconnect so that token text is neither lost nor doubled.
//
//   import { WirthforgeClient } from "/static/wirthforge-client.js";
//   const client = new WirthforgeClient();          // ws(s)://<this origin>/ws
//   client.on("token_stream", (event) => ...);      // by type
//   client.on("channel:energy", (event) => ...);    // by channel
//   client.on("state", ({ state, previous }) => ...);
//   client.start();

export const ConnectionState = Object.freeze({
  DISCONNECTED: "disconnected",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

const S = ConnectionState;

// The transitions the state machine allows; anything else is a bug in this module.
const TRANSITIONS = {
  [S.DISCONNECTED]: [S.CONNECTING, S.CLOSED],
  [S.CONNECTING]: [S.CONNECTED, S.RECONNECTING, S.CLOSED],
  [S.CONNECTED]: [S.RECONNECTING, S.CLOSED],
  [S.RECONNECTING]: [S.CONNECTING, S.CLOSED],
  [S.CLOSED]: [],
};

export const CHANNELS = Object.freeze(["energy", "experience", "council", "reward", "system"]);
export const EXTENSION_TOPICS = Object.freeze(["models"]);
const DEFAULT_CHANNELS = new Set(CHANNELS);

export const CLOSE_NORMAL = 1000;
const CLOSE_ABNORMAL = 1006;
// Subprotocols offered with a token; the server selects the first, so the token is not
// echoed back.
const PROTOCOL = "wirthforge.v1";
const TOKEN_PROTOCOL_PREFIX = "wirthforge.token.";

/** Full-jitter exponential backoff: attempt n waits a uniform time in [0, min(cap, base*2^n)]. */
export class Backoff {
  constructor({ initialMs = 1000, maxMs = 30000, factor = 2, random = Math.random } = {}) {
    this.initialMs = initialMs;
    this.maxMs = maxMs;
    this.factor = factor;
    this.random = random;
  }

  ceiling(attempt) {
    return Math.min(this.maxMs, this.initialMs * this.factor ** attempt);
  }

  delay(attempt) {
    return this.random() * this.ceiling(attempt);
  }
}

/** The page's own /ws, with ws: or wss: to match http: or https:. */
export function defaultUrl(location = globalThis.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function withResume(url) {
  const parsed = new URL(url);
  parsed.searchParams.set("resume", "1");
  return parsed.toString();
}

/**
 * One session's text as received. `offset` counts tokens sent before this client joined
 * (learned from a snapshot): the text then starts mid-way.
 */
export class SessionText {
  constructor(sessionId, modelId, offset = 0) {
    this.sessionId = sessionId;
    this.modelId = modelId;
    this.offset = offset;
    this.tokens = [];
    this.complete = false;
  }

  get text() {
    return this.tokens.join("");
  }

  get count() {
    return this.offset + this.tokens.length;
  }
}

export class WirthforgeClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.url] the server's /ws URL (default: this page's origin)
   * @param {boolean} [options.resume] reconnect with /ws?resume=1 and a resume message
   * @param {number} [options.watchdogMs] silence that counts as a dead server
   * @param {number} [options.pingIntervalMs] round-trip probes (0: none)
   * @param {Backoff} [options.backoff]
   * @param {string} [options.token] the server's access token, if it has one (sent as the
   *   WebSocket subprotocol `wirthforge.token.<token>`, never in the URL)
   */
  constructor({
    url = undefined,
    token = undefined,
    resume = true,
    watchdogMs = 2000,
    pingIntervalMs = 1000,
    backoff = new Backoff(),
    WebSocketImpl = globalThis.WebSocket,
    doc = globalThis.document,
  } = {}) {
    super();
    this.url = url ?? defaultUrl();
    this.token = token || null;
    this.resume = resume;
    this.watchdogMs = watchdogMs;
    this.pingIntervalMs = pingIntervalMs;
    this.backoff = backoff;
    this.WebSocketImpl = WebSocketImpl;
    this.doc = doc;

    this.state = S.DISCONNECTED;
    this.attempt = 0;
    this.startup = null; // the latest startup_complete payload
    this.serverInstance = null;
    this.lastFrame = null;
    // The reward and error events received since the last frame, as sent: a resume replays
    // them when the connection broke before the next frame (docs/protocol.md, resume).
    this._afterFrame = [];
    this._replaying = false; // between a resumed snapshot and the first live frame
    this.replaysDropped = 0;
    this.lastMessageAt = 0;
    this.rttMs = null;
    this.closeCode = null;
    this.closeReason = null;
    /** @type {Map<string, SessionText>} */
    this.sessions = new Map();
    this.lostSessions = [];

    this._channels = new Set(DEFAULT_CHANNELS);
    this._modelsIncluded = null; // null: every model
    this._modelsExcluded = new Set();
    this._ws = null;
    this._reported = new Map(); // sessionId -> count this connection's resume reported
    this._expected = new Map(); // sessionId -> where its next token_stream starts
    this._retryTimer = null;
    this._watchdogTimer = null;
    this._pingTimer = null;
    this._pingSeq = 0;
    this._pings = new Map(); // ping id -> {sentAt, resolve}
    this._onVisibility = () => this._visibilityChanged();
  }

  // --- public API ------------------------------------------------------------------------

  /** `handler(detail)` for events of `type`: a message type, `channel:NAME`, `state`, ... */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  start() {
    if (this.state !== S.DISCONNECTED) return;
    this.doc?.addEventListener?.("visibilitychange", this._onVisibility);
    this._watchdogTimer = setInterval(() => this._checkWatchdog(), 250);
    if (this.pingIntervalMs > 0) {
      this._pingTimer = setInterval(() => this._sendPing(), this.pingIntervalMs);
    }
    this._connect();
  }

  /** Close for good (no reconnect). */
  close(code = CLOSE_NORMAL, reason = "client closing") {
    if (this.state === S.CLOSED) return;
    this._clearRetry();
    clearInterval(this._watchdogTimer);
    clearInterval(this._pingTimer);
    this.doc?.removeEventListener?.("visibilitychange", this._onVisibility);
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
    this.closeCode = code;
    this.closeReason = reason;
    this._setState(S.CLOSED);
  }

  get channels() {
    return new Set(this._channels);
  }

  subscribe({ channels = [], models = [] } = {}) {
    this._checkChannels(channels);
    for (const c of channels) this._channels.add(c);
    if (models.includes("*")) {
      this._modelsIncluded = null;
      this._modelsExcluded.clear();
    } else if (models.length) {
      this._modelsIncluded ??= new Set();
      for (const m of models) {
        this._modelsIncluded.add(m);
        this._modelsExcluded.delete(m);
      }
    }
    this._sendIfOpen({ type: "subscribe", payload: { channels, models } });
  }

  unsubscribe({ channels = [], models = [] } = {}) {
    this._checkChannels(channels);
    if (channels.includes("system")) throw new Error("the system channel cannot be left");
    for (const c of channels) this._channels.delete(c);
    for (const m of models) {
      if (this._modelsIncluded) this._modelsIncluded.delete(m);
      else this._modelsExcluded.add(m);
    }
    this._sendIfOpen({ type: "unsubscribe", payload: { channels, models } });
  }

  /** Round trip of one `ping` in ms (rejects when the connection ends first). */
  ping(payload = {}) {
    return new Promise((resolve, reject) => {
      if (!this._isOpen()) {
        reject(new Error("not connected"));
        return;
      }
      const id = `p${++this._pingSeq}`;
      this._pings.set(id, { sentAt: performance.now(), resolve, reject });
      this._send({ type: "ping", payload: { ...payload, id } });
    });
  }

  // --- the state machine -----------------------------------------------------------------

  _setState(next) {
    const previous = this.state;
    if (previous === next) return;
    if (!TRANSITIONS[previous].includes(next)) {
      throw new Error(`illegal transition ${previous} -> ${next}`);
    }
    this.state = next;
    this._emit("state", { state: next, previous, closeCode: this.closeCode });
  }

  _connect() {
    this._setState(S.CONNECTING);
    const url = this.resume ? withResume(this.url) : this.url;
    let ws;
    try {
      ws = this.token
        ? new this.WebSocketImpl(url, [PROTOCOL, `${TOKEN_PROTOCOL_PREFIX}${this.token}`])
        : new this.WebSocketImpl(url);
    } catch (error) {
      this._lost(CLOSE_ABNORMAL, String(error));
      return;
    }
    this._ws = ws;
    this.lastMessageAt = performance.now();
    ws.onopen = () => this._opened(ws);
    ws.onmessage = (event) => this._received(ws, event.data);
    ws.onclose = (event) => {
      if (ws === this._ws) this._lost(event.code, event.reason);
    };
    ws.onerror = () => {}; // a close event always follows, and carries the code
  }

  _opened(ws) {
    if (ws !== this._ws) return;
    this.lastMessageAt = performance.now();
    this._reported = new Map();
    this._expected = new Map();
    for (const message of this._openingMessages()) this._send(message);
    this._setState(S.CONNECTED);
  }

  /** The connection ended (closed, failed, or silent): reconnect unless it was a 1000. */
  _lost(code, reason) {
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      if (ws.readyState === 0 || ws.readyState === 1) {
        try {
          ws.close(4000, "client watchdog");
        } catch {
          /* already closing */
        }
      }
    }
    this.closeCode = code;
    this.closeReason = reason || null;
    for (const pending of this._pings.values()) pending.reject(new Error("connection lost"));
    this._pings.clear();
    if (this.state === S.CLOSED) return;
    if (code === CLOSE_NORMAL) {
      this._setState(S.CLOSED);
      return;
    }
    this._setState(S.RECONNECTING);
    const delay = this.backoff.delay(this.attempt);
    this.attempt += 1;
    this._emit("reconnecting", { code, reason: this.closeReason, delayMs: delay });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._connect();
    }, delay);
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  _clearRetry() {
    if (this._retryTimer !== null) clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  _checkWatchdog() {
    if (this.state !== S.CONNECTED && this.state !== S.CONNECTING) return;
    if (this.doc?.hidden) return; // throttled timers would report silence that is not there
    if (performance.now() - this.lastMessageAt > this.watchdogMs) {
      this._lost(CLOSE_ABNORMAL, "server silent");
    }
  }

  _visibilityChanged() {
    if (this.doc?.hidden) return;
    if (this.state === S.RECONNECTING && this._retryTimer !== null) {
      // Back in view: try now rather than after a backoff that grew while nobody looked.
      this._clearRetry();
      this.attempt = 0;
      this._connect();
    } else {
      this._checkWatchdog();
    }
  }

  // --- the wire --------------------------------------------------------------------------

  _isOpen() {
    return this._ws !== null && this._ws.readyState === 1;
  }

  _send(message) {
    this._ws.send(JSON.stringify(message));
  }

  _sendIfOpen(message) {
    if (this._isOpen() && this.state === S.CONNECTED) this._send(message);
  }

  _sendPing() {
    if (this.state !== S.CONNECTED || !this._isOpen()) return;
    this.ping().then(
      (rtt) => {
        this.rttMs = rtt;
        this._emit("rtt", { rttMs: rtt });
      },
      () => {},
    );
  }

  _checkChannels(channels) {
    for (const c of channels) {
      if (!CHANNELS.includes(c) && !EXTENSION_TOPICS.includes(c)) {
        throw new Error(`unknown channel ${c}`);
      }
    }
  }

  /** `resume` (or the subscription changes) that restore this client's state. */
  _openingMessages() {
    const messages = [];
    if (this.resume) {
      const held = [...this.sessions.values()].filter((s) => !s.complete);
      for (const s of held) this._reported.set(s.sessionId, s.count);
      const payload = {
        sessions: held.map((s) => ({ sessionId: s.sessionId, tokens: s.count })),
      };
      if (this.serverInstance !== null) payload.serverInstance = this.serverInstance;
      if (this.lastFrame !== null) payload.lastFrame = this.lastFrame;
      if (!sameSet(this._channels, DEFAULT_CHANNELS)) {
        payload.channels = [...CHANNELS, ...EXTENSION_TOPICS].filter((c) => this._channels.has(c));
      }
      if (this._modelsIncluded !== null) {
        payload.models = [...this._modelsIncluded].filter((m) => !this._modelsExcluded.has(m));
      }
      messages.push({ type: "resume", payload });
    } else {
      const dropped = [...DEFAULT_CHANNELS].filter((c) => !this._channels.has(c));
      const added = [...this._channels].filter((c) => !DEFAULT_CHANNELS.has(c));
      if (dropped.length) messages.push({ type: "unsubscribe", payload: { channels: dropped } });
      if (added.length) messages.push({ type: "subscribe", payload: { channels: added } });
      if (this._modelsIncluded?.size) {
        messages.push({ type: "subscribe", payload: { models: [...this._modelsIncluded] } });
      }
    }
    if (this._modelsIncluded === null && this._modelsExcluded.size) {
      // "every model but these" has no resume field: restore it with an unsubscribe.
      messages.push({ type: "unsubscribe", payload: { models: [...this._modelsExcluded] } });
    }
    return messages;
  }

  _received(ws, data) {
    if (ws !== this._ws) return;
    this.lastMessageAt = performance.now();
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      this._emit("undecodable", { data });
      return;
    }
    if (message === null || typeof message !== "object" || typeof message.type !== "string") {
      this._emit("undecodable", { data });
      return;
    }
    if (message.type === "reward_event" || message.type === "error_event") {
      const seen = this._replaying ? this._afterFrame.indexOf(data) : -1;
      if (seen >= 0) {
        this._afterFrame.splice(seen, 1);
        this.replaysDropped += 1;
        return;
      }
      this._afterFrame.push(data);
      if (this._afterFrame.length > 256) this._afterFrame.shift();
    }
    const delivered = this._account(message);
    if (delivered === null) return;
    this._emit(delivered.type, delivered);
    if (delivered.channel) this._emit(`channel:${delivered.channel}`, delivered);
    this._emit("message", delivered);
  }

  _account(message) {
    const payload = message.payload ?? {};
    switch (message.type) {
      case "startup_complete":
        this.startup = payload;
        break;
      case "heartbeat":
        this.attempt = 0; // the server serves: the backoff starts over
        this._send({ type: "heartbeat_response", payload: { sequence: payload.sequence } });
        break;
      case "token_stream":
        return this._accountTokens(message);
      case "state_snapshot":
        this.attempt = 0;
        this._accountSnapshot(message);
        break;
      case "pong": {
        const pending = this._pings.get(payload.id);
        if (pending) {
          this._pings.delete(payload.id);
          pending.resolve(performance.now() - pending.sentAt);
        }
        break;
      }
      default:
        break;
    }
    if (typeof message.frameNumber === "number") {
      this.lastFrame = message.frameNumber;
      this._afterFrame = [];
      this._replaying = false;
    }
    return message;
  }

  /**
   * Append a token_stream's tokens exactly once, wherever they start in the session. A
   * batch continues at the client's count, except the first one after a resumed snapshot: a
   * replay ends at the snapshot's count (so it starts at `published - tokens.length`), which
   * may overlap what the client holds (trimmed) and, for a session the client did not hold,
   * covers the whole session. The delivered event carries only the new tokens.
   */
  _accountTokens(message) {
    const payload = message.payload;
    const sid = payload.sessionId;
    let tokens = payload.tokens;
    const expected = this._expected.get(sid);
    this._expected.delete(sid);
    let session = this.sessions.get(sid);
    if (session === undefined) {
      let offset = 0;
      if (expected !== undefined) {
        const isReplay =
          expected.published > 0 &&
          tokens.length === expected.published &&
          message.timestamp === expected.timestamp;
        offset = isReplay ? 0 : expected.published;
      }
      session = new SessionText(sid, payload.modelId, offset);
      this.sessions.set(sid, session);
      this._emit("session", { session });
    } else if (session.complete) {
      return null;
    } else {
      const have = session.count;
      let start = have;
      if (expected !== undefined && expected.held !== undefined) {
        if (expected.published > expected.held) start = expected.published - tokens.length;
      }
      const overlap = Math.max(0, have - start);
      if (overlap) tokens = tokens.slice(overlap);
    }
    session.tokens.push(...tokens);
    session.complete = payload.isComplete;
    if (!tokens.length && !payload.isComplete) return null;
    if (tokens === payload.tokens) return message;
    return { ...message, payload: { ...payload, tokens } };
  }

  /** Learn the server instance; drop sessions that cannot be resumed; note the rest. */
  _accountSnapshot(message) {
    const snap = message.payload;
    if (snap.serverInstance !== this.serverInstance) this.lastFrame = null;
    if (!snap.resumed) this._afterFrame = []; // nothing will be replayed
    this._replaying = snap.resumed === true;
    this.serverInstance = snap.serverInstance;
    const known = new Map(snap.sessions.map((s) => [s.sessionId, s]));
    const lost = new Set();
    for (const [sid, held] of [...this.sessions]) {
      if (held.complete) continue; // nothing of it is missing, whatever the server remembers
      const info = known.get(sid);
      if (info !== undefined && info.resumable && snap.resumed) continue;
      this.sessions.delete(sid);
      lost.add(sid);
      this.lostSessions.push(sid);
      this._emit("session_lost", {
        sessionId: sid,
        reason: info?.reason ?? snap.reason ?? "unknown",
        tokens: held.tokens.length,
      });
    }
    this._expected.clear();
    for (const info of snap.sessions) {
      const sid = info.sessionId;
      if (snap.resumed) {
        if (lost.has(sid) || (this.sessions.has(sid) && !this._reported.has(sid))) continue;
        this._expected.set(sid, {
          held: this._reported.get(sid),
          published: info.tokens,
          timestamp: message.timestamp,
        });
      } else if (!this.sessions.has(sid) && info.status === "streaming") {
        // Nothing is replayed without a resume: live tokens continue at this count.
        const session = new SessionText(sid, info.modelId, info.tokens);
        this.sessions.set(sid, session);
        this._emit("session", { session });
      }
    }
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function sameSet(a, b) {
  if (a.size !== b.size) return false;
  for (const x of a) if (!b.has(x)) return false;
  return true;
}
