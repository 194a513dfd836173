// lexicons.js: a small client for the lexicons native protocol (no dependencies).
//
//   import { Client } from "./lexicons.js";
//   const client = new Client({ headers: { Login: { name: "alice", password: "secret" } } });
//   client.on("Message", (message) => show(message));       // broadcasts by name
//   await client.connect();                                  // rejects with the refusal
//   await client.subscribe("public");                        // re-subscribed on reconnect
//   const rooms = await client.call("Rooms");                // resolves with the answer
//
// Wire format (text frames of JSON):
//   call       {"Signal": {kwargs}, "#": 7}
//   answer     [{"Signal": value, "#": 7}]
//   error      [{"Errors": ["message", ...], "#": 7}]
//   broadcast  [{"Signal": payload}]
//   positioned [{"Signal": payload, "@": {"channel": "room:a", "epoch": "9f2c41d0", "offset": 12}}]
//
// A channel with history gives each broadcast a position. The client keeps the
// last one per subscribed channel and, on reconnect, subscribes again with
// {recover: position}: the broadcasts sent meanwhile arrive (in order, before
// the new ones), and the "recover" listeners get {channel, recovered, missed};
// recovered false means the history no longer reached back (reload another way).
//
// Headers go in the URL's query (browsers cannot set headers on a websocket):
// ?Login={"name":"alice","password":"secret"}. When the server refuses the
// upgrade, a browser tells the page nothing but "closed" (code 1006): the
// refusal's HTTP body is not readable from JavaScript. So after a failed
// connect, the client asks the server's plain HTTP check endpoint (/gate, same
// query) why, and rejects with that reason; a client that cannot reach it is
// told the server is unreachable.
//
// A password does not belong in a URL (the console, the history and proxy logs
// keep them): log in with session.js and pass its `query` function, so that
// each connect carries a one-use ticket only.

/** An error the server answered a call with; `messages` holds its texts. */
export class CallError extends Error {
  constructor(messages) {
    super(messages.join("; "));
    this.name = "CallError";
    this.messages = messages;
  }
}

/** The server refused to connect: `status` (401, 403, ...) and the server's `reason`. */
export class RefusedError extends Error {
  constructor(status, reason) {
    super(reason);
    this.name = "RefusedError";
    this.status = status;
    this.reason = reason;
  }
}

/** The connection is down: the call could not be sent, or its answer was lost. */
export class ConnectionError extends Error {
  constructor(message) {
    super(message);
    this.name = "ConnectionError";
  }
}

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/`;
}

/** A connection to a lexicons server, reconnecting with exponential backoff. */
export class Client {
  /**
   * @param {object} options
   * @param {string} [options.url]      websocket URL (default: this page's host, path /)
   * @param {object} [options.headers]  {HeaderName: {kwargs}} sent as query parameters
   * @param {string} [options.checkPath] plain HTTP path that tells why a connect was refused
   * @param {number} [options.minDelay] first reconnect delay in ms (doubles each try)
   * @param {number} [options.maxDelay] longest reconnect delay in ms
   * @param {number} [options.timeout]  ms to wait for an answer before rejecting a call
   * @param {function} [options.query]  async () => {name: value}: more query parameters,
   *                                    asked afresh for each connect (a session's ticket);
   *                                    a RefusedError from it refuses the connect
   */
  constructor(options = {}) {
    this.url = options.url || defaultUrl();
    this.headers = options.headers || {};
    this.checkPath = options.checkPath || "/gate";
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 15000;
    this.timeout = options.timeout ?? 15000;
    this.query = options.query || null;
    this.lastUrl = "";
    this.state = "idle";            // idle, connecting, open, waiting, closed
    this.socket = null;
    this.channels = new Set();      // subscribed by this client: re-subscribed on reconnect
    this.positions = new Map();     // channel -> {offset, epoch} of the last broadcast seen
    this.handlers = new Map();      // broadcast name -> Set of functions
    this.listeners = new Map();     // "state", "reconnect", "error", "refused" -> Set
    this.pending = new Map();       // call id -> {resolve, reject, timer}
    this.nextId = 1;
    this.attempt = 0;
    this.everOpen = false;
    this.retryTimer = null;
  }

  /** Return the websocket URL with the headers (and `extra`) as query parameters. */
  connectUrl(extra = {}) {
    const url = new URL(this.url, location.href);
    for (const [name, kwargs] of Object.entries(this.headers)) {
      url.searchParams.set(name, JSON.stringify(kwargs));
    }
    for (const [name, value] of Object.entries(extra)) url.searchParams.set(name, value);
    return url.toString();
  }

  /** Open the connection; resolves once open, rejects with RefusedError or ConnectionError. */
  connect() {
    clearTimeout(this.retryTimer);
    return new Promise((resolve, reject) => this.open(resolve, reject));
  }

  open(resolve, reject) {
    this.setState("connecting");
    if (!this.query) {
      this.dial({}, resolve, reject);
      return;
    }
    Promise.resolve().then(() => this.query()).then(
      (extra) => { if (this.state !== "closed") this.dial(extra || {}, resolve, reject); },
      (error) => this.queryFailed(error, reject));
  }

  // The query function failed: refused (say so, for good), or the server is unreachable.
  queryFailed(error, reject) {
    if (this.state === "closed") return;
    if (error instanceof RefusedError) {
      this.setState("closed");
      this.emit("refused", error);
      if (reject) reject(error);
    } else if (!this.everOpen && reject) {
      this.setState("closed");
      reject(new ConnectionError(`cannot reach the server (${error.message || error})`));
    } else {
      this.retry();
    }
  }

  dial(extra, resolve, reject) {
    this.lastUrl = this.connectUrl(extra);
    const socket = new WebSocket(this.lastUrl);
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      const again = this.everOpen;
      this.everOpen = true;
      this.attempt = 0;
      this.setState("open");
      this.resubscribe();
      if (again) this.emit("reconnect");
      if (resolve) resolve(this);
    };
    socket.onmessage = (event) => this.receive(event.data);
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.failPending("the connection was lost");
      if (this.state === "closed") return;  // close() was called
      if (!opened) {
        this.whyNot().then((refusal) => {
          if (refusal) {
            this.setState("closed");
            this.emit("refused", refusal);
            if (reject) reject(refusal);
          } else if (!this.everOpen && reject) {
            this.setState("closed");
            reject(new ConnectionError(`cannot reach the server (code ${event.code})`));
          } else {
            this.retry();
          }
        });
        return;
      }
      this.retry();
    };
  }

  /** Ask the check endpoint why the last connect failed: a RefusedError, or null. */
  async whyNot() {
    const url = new URL(this.lastUrl || this.connectUrl());
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    url.pathname = this.checkPath;
    try {
      const response = await fetch(url, { cache: "no-store" });
      if (response.ok) return null;
      let reason = `refused (HTTP ${response.status})`;
      try {
        const body = await response.json();
        reason = body.reason || body.error || reason;
      } catch (ignored) { /* not JSON: keep the status */ }
      return new RefusedError(response.status, reason);
    } catch (unreachable) {
      return null;
    }
  }

  retry() {
    const delay = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
    this.attempt += 1;
    this.setState("waiting");
    // Jitter, so that many clients of a restarted server do not all come back at once.
    this.retryTimer = setTimeout(() => this.open(null, null), delay * (0.5 + Math.random() / 2));
  }

  /** Close for good (no reconnect); pending calls are rejected. */
  close() {
    clearTimeout(this.retryTimer);
    this.setState("closed");
    const socket = this.socket;
    this.socket = null;
    this.failPending("the connection was closed");
    if (socket) socket.close(1000);
  }

  /** Call signal `name` with `kwargs`; resolves with its answer, rejects with CallError. */
  call(name, kwargs = {}) {
    return this.send({ [name]: kwargs });
  }

  send(message) {
    return new Promise((resolve, reject) => {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) {
        reject(new ConnectionError("not connected"));
        return;
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ConnectionError("no answer in time"));
      }, this.timeout);
      this.pending.set(id, { resolve, reject, timer });
      this.socket.send(JSON.stringify({ ...message, "#": id }));
    });
  }

  /** Join `channel` (the server's permission applies); kept across reconnects. */
  async subscribe(channel) {
    const answer = await this.call("Subscribe", { channel });
    this.channels.add(channel);
    this.advance(channel, answer);
    return answer;
  }

  /** Leave `channel`. */
  async unsubscribe(channel) {
    this.channels.delete(channel);
    this.positions.delete(channel);
    return this.call("Unsubscribe", { channel });
  }

  // --- positions and recovery (channels with history) ---------------------------------

  /** Subscribe again to every channel, asking for what was missed since its position. */
  resubscribe() {
    for (const channel of this.channels) {
      const position = this.positions.get(channel);
      const fresh = () => this.send({ Subscribe: { channel } });
      const asked = position ? this.send({ Subscribe: { channel, recover: position } }) : fresh();
      asked
        // a position the server refuses (say, from before its history began): start anew
        .catch((error) => (position && error instanceof CallError
          ? fresh().then((answer) => ({ ...answer, recovered: false, missed: 0 }))
          : Promise.reject(error)))
        .then((answer) => {
          if (!answer || typeof answer !== "object" || !("epoch" in answer)) return;
          if (answer.recovered === false) this.positions.delete(channel);
          this.advance(channel, answer);
          if (position) {
            this.emit("recover", { channel, recovered: answer.recovered !== false,
                                   missed: answer.missed || 0 });
          }
        })
        .catch((error) => this.emit("error", error));
    }
  }

  /** Keep the newer of the known position and `where` ({offset, epoch}). */
  advance(channel, where) {
    if (!where || typeof where !== "object" || typeof where.offset !== "number"
        || typeof where.epoch !== "string") return;
    const known = this.positions.get(channel);
    if (!known || known.epoch !== where.epoch || where.offset > known.offset) {
      this.positions.set(channel, { offset: where.offset, epoch: where.epoch });
    }
  }

  /** Call `handler(payload)` for every broadcast named `name`. */
  on(name, handler) {
    if (!this.handlers.has(name)) this.handlers.set(name, new Set());
    this.handlers.get(name).add(handler);
    return this;
  }

  /** Stop calling `handler` for broadcasts named `name`. */
  off(name, handler) {
    this.handlers.get(name)?.delete(handler);
    return this;
  }

  /** Listen to the client itself: "state", "reconnect", "recover", "refused" or "error". */
  listen(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return this;
  }

  emit(event, value) {
    for (const fn of this.listeners.get(event) || []) fn(value);
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  failPending(reason) {
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new ConnectionError(reason));
    }
    this.pending.clear();
  }

  receive(text) {
    let items;
    try {
      items = JSON.parse(text);
    } catch (error) {
      this.emit("error", new Error(`the server sent invalid JSON: ${error.message}`));
      return;
    }
    for (const item of Array.isArray(items) ? items : [items]) {
      const id = item["#"];
      const call = id === undefined ? undefined : this.pending.get(id);
      if (call) {
        this.pending.delete(id);
        clearTimeout(call.timer);
        if ("Errors" in item) call.reject(new CallError(item.Errors));
        else call.resolve(item[Object.keys(item).find((key) => key !== "#")]);
        continue;
      }
      if (item["@"]) this.advance(item["@"].channel, item["@"]);
      for (const [name, payload] of Object.entries(item)) {
        if (name === "#" || name === "@") continue;
        if (name === "Errors") {
          this.emit("error", new CallError(payload));
          continue;
        }
        for (const handler of this.handlers.get(name) || []) handler(payload);
      }
    }
  }
}
