// session.js: log in to a lexicons server without credentials in any URL.
//
//   import { Client } from "./lexicons.js";
//   import { Session } from "./session.js";
//   const session = new Session();
//   await session.login({ Login: { name: "alice", password: "secret" } });  // POST /session
//   const client = new Client({ query: session.query });  // connects with ?ticket=... only
//   await client.connect();
//   ...
//   await session.logout();                               // DELETE /session
//
// The server runs the headers of the login once, over plain HTTP (the
// password travels in a request body, never in a URL), and answers a session
// token and a ticket. A ticket is good for one connect within a few seconds;
// the client asks a new one with the token before every connect (a reconnect
// included). The token is kept in sessionStorage, so a reload of the page
// stays logged in; closing the tab or logging out forgets it.

import { RefusedError } from "./lexicons.js";

/** A login session with a lexicons server (see the top of this file). */
export class Session {
  /**
   * @param {object} options
   * @param {string} [options.path]    the server's session endpoint (default /session)
   * @param {Storage} [options.storage] where the token is kept (default sessionStorage)
   * @param {string} [options.key]     the storage key
   */
  constructor(options = {}) {
    this.path = options.path || "/session";
    this.storage = options.storage || window.sessionStorage;
    this.key = options.key || "lexicons.session";
    this.ticketInHand = null;  // the ticket that came with the login, not yet used
    this.query = () => this.ticket().then((ticket) => ({ ticket }));
  }

  /** Return the stored session: {token, info}, or null when logged out. */
  get stored() {
    try {
      return JSON.parse(this.storage.getItem(this.key) || "null");
    } catch (ignored) {
      return null;
    }
  }

  /** Tell whether a session is kept (it may still have ended on the server). */
  get active() {
    return Boolean(this.stored?.token);
  }

  /** Return what the page kept with the session (say, the user's name). */
  get info() {
    return this.stored?.info ?? null;
  }

  /** Log in with `headers` ({HeaderName: {kwargs}}); keep `info` beside the token. */
  async login(headers, info = null) {
    const answer = await this.request("POST", { headers });
    this.storage.setItem(this.key, JSON.stringify({ token: answer.session, info }));
    this.ticketInHand = answer.ticket;
    return answer;
  }

  /** Return a ticket for one connect; RefusedError when the session has ended. */
  async ticket() {
    if (this.ticketInHand) {
      const ticket = this.ticketInHand;
      this.ticketInHand = null;
      return ticket;
    }
    const token = this.stored?.token;
    if (!token) throw new RefusedError(401, "not logged in");
    try {
      return (await this.request("POST", { session: token })).ticket;
    } catch (error) {
      if (error instanceof RefusedError) this.forget();
      throw error;
    }
  }

  /** End the session, here and on the server. */
  async logout() {
    const token = this.stored?.token;
    this.forget();
    if (!token) return;
    try {
      await this.request("DELETE", { session: token });
    } catch (ignored) { /* forgotten here: the server ends it unused in time */ }
  }

  forget() {
    this.storage.removeItem(this.key);
    this.ticketInHand = null;
  }

  async request(method, body) {
    const response = await fetch(this.path, {
      method,
      cache: "no-store",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    let answer = null;
    try {
      answer = await response.json();
    } catch (ignored) { /* not JSON: the status says enough */ }
    if (!response.ok) {
      throw new RefusedError(response.status,
        answer?.reason || answer?.error || `refused (HTTP ${response.status})`);
    }
    return answer;
  }
}
