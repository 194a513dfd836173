// The chat page: log in or register, rooms, direct messages, live messages.
import { CallError, Client, RefusedError } from "./lexicons.js";
import { Session } from "./session.js";

const $ = (id) => document.getElementById(id);

const state = {
  client: null,
  me: "",
  rooms: new Map(),      // name -> {name, topic, members}
  joined: new Set(),     // rooms this page is in (dm: rooms included)
  dms: new Set(),        // dm:a+b rooms seen
  active: "",
  messages: new Map(),   // room -> [message]
  unread: new Map(),     // room -> count
  online: [],
};

// --- helpers ----------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

function dmRoom(a, b) {
  return "dm:" + [a, b].sort().join("+");
}

function dmPeer(room) {
  const [a, b] = room.slice(3).split("+");
  return a === state.me ? b : a;
}

function title(room) {
  return room.startsWith("dm:") ? "@" + dmPeer(room) : "#" + room;
}

function time(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

let noticeTimer = 0;
function notice(text) {
  const box = $("notice");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { box.hidden = true; }, 6000);
}

// With the gate `any`, the server lists every header's verdict ("Login: wrong
// name or password; Register: not given"); the ones not sent say nothing new.
function refusal(reason) {
  const parts = reason.split("; ").filter((part) => !part.endsWith(": not given"));
  return parts.join("; ") || reason;
}

function explain(error) {
  if (error instanceof CallError) return error.messages.join("; ");
  return error.message || String(error);
}

// Report a failed call on the page instead of losing it in the console.
function guard(promise) {
  return promise.catch((error) => { notice(explain(error)); throw error; });
}

// --- rendering --------------------------------------------------------------------------

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren();
  for (const room of [...state.rooms.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const unread = state.unread.get(room.name) || 0;
    const item = el("li", { className: "item" + (room.name === state.active ? " active" : "") },
      el("span", { className: "name", textContent: "#" + room.name }),
      el("span", { className: "count", textContent: room.members.length || "" }));
    if (state.joined.has(room.name)) item.classList.add("joined");
    if (unread) item.append(el("span", { className: "badge", textContent: unread }));
    item.dataset.room = room.name;
    item.title = room.topic;
    item.onclick = () => open(room.name);
    list.append(item);
  }
  const dms = $("dms");
  dms.replaceChildren();
  for (const room of [...state.dms].sort()) {
    const unread = state.unread.get(room) || 0;
    const item = el("li", { className: "item joined" + (room === state.active ? " active" : "") },
      el("span", { className: "name", textContent: "@" + dmPeer(room) }));
    if (unread) item.append(el("span", { className: "badge", textContent: unread }));
    item.dataset.room = room;
    item.onclick = () => open(room);
    dms.append(item);
  }
  const online = $("online");
  online.replaceChildren();
  for (const user of state.online) {
    const item = el("li", { className: "item person" },
      el("span", { className: "dot" }), el("span", { className: "name", textContent: user }));
    if (user === state.me) {
      item.append(el("span", { className: "hint", textContent: " (you)" }));
    } else {
      item.title = `Message ${user} privately`;
      item.onclick = () => open(dmRoom(state.me, user));
    }
    online.append(item);
  }
}

function renderRoom() {
  const room = state.active;
  const info = state.rooms.get(room);
  $("room-title").textContent = room ? title(room) : "";
  $("room-topic").textContent = info ? info.topic : room ? "private conversation" : "";
  const members = info ? info.members : [];
  $("room-members").textContent = members.length ? `in the room: ${members.join(", ")}` : "";
  $("leave").hidden = !room || room.startsWith("dm:") || !state.joined.has(room);
  const list = $("messages");
  list.replaceChildren();
  for (const message of state.messages.get(room) || []) list.append(messageItem(message));
  list.scrollTop = list.scrollHeight;
}

function messageItem(message) {
  if (message.system) {
    return el("li", { className: "system", textContent: message.text });
  }
  const mine = message.author === state.me;
  return el("li", { className: "message" + (mine ? " mine" : "") },
    el("div", { className: "meta" },
      el("span", { className: "author", textContent: message.author }),
      el("time", { textContent: time(message.time) })),
    el("div", { className: "text", textContent: message.text }));
}

function addMessage(room, message) {
  if (!state.messages.has(room)) state.messages.set(room, []);
  state.messages.get(room).push(message);
  if (room === state.active) {
    const list = $("messages");
    list.append(messageItem(message));
    list.scrollTop = list.scrollHeight;
  }
}

// --- actions ----------------------------------------------------------------------------

async function open(room) {
  if (!state.joined.has(room)) {
    const answer = await guard(state.client.call("Join", { room }));
    await follow(room);
    state.joined.add(room);
    state.messages.set(room, answer.messages);
    if (room.startsWith("dm:")) state.dms.add(room);
    const info = state.rooms.get(room);
    if (info) info.members = answer.members;
  }
  state.active = room;
  state.unread.delete(room);
  renderRooms();
  renderRoom();
  $("text").focus();
}

async function leave() {
  const room = state.active;
  await guard(state.client.call("Leave", { room }));
  state.joined.delete(room);
  state.messages.delete(room);
  const next = [...state.joined][0] || "";
  state.active = "";
  if (next) await open(next);
  else { renderRooms(); renderRoom(); }
}

async function send(event) {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text || !state.active) return;
  input.value = "";
  try {
    await guard(state.client.call("Send", { room: state.active, text }));
  } catch (error) {
    input.value = text;   // keep what was typed when it could not be sent
  }
}

async function createRoom(event) {
  event.preventDefault();
  const input = $("room-name");
  const name = input.value.trim().toLowerCase();
  if (!name) return;
  const room = await guard(state.client.call("CreateRoom", { name }));
  input.value = "";
  state.rooms.set(room.name, room);
  await open(room.name);
}

// --- broadcasts -------------------------------------------------------------------------

function listen(client) {
  client.on("Message", (message) => {
    const room = message.room;
    if (room.startsWith("dm:") && !state.dms.has(room)) {
      state.dms.add(room);
      state.joined.add(room);
      state.messages.set(room, []);
    }
    addMessage(room, message);
    if (room !== state.active) {
      state.unread.set(room, (state.unread.get(room) || 0) + 1);
      renderRooms();
    }
  });
  client.on("Join", ({ room, user }) => {
    addMessage(room, { system: true, text: `${user} joined` });
    memberChange(room, user, true);
  });
  client.on("Leave", ({ room, user }) => {
    addMessage(room, { system: true, text: `${user} left` });
    memberChange(room, user, false);
  });
  client.on("CreateRoom", (room) => {
    if (!state.rooms.has(room.name)) state.rooms.set(room.name, room);
    renderRooms();
  });
  client.on("Online", ({ users, rooms }) => {
    state.online = users;
    for (const [name, members] of Object.entries(rooms)) {
      const info = state.rooms.get(name);
      if (info) info.members = members;
    }
    renderRooms();
    if (state.rooms.has(state.active)) renderRoom();
  });
  client.listen("state", (value) => {
    const labels = { connecting: "connecting…", open: "online", waiting: "reconnecting…",
                     closed: "offline", idle: "offline" };
    $("status").textContent = labels[value] || value;
    $("status").dataset.state = value;
  });
  client.listen("reconnect", () => { rejoin().catch((error) => notice(explain(error))); });
  client.listen("recover", (result) => { recovered(result).catch((error) => notice(explain(error))); });
  client.listen("refused", (error) => logout(error.reason));
  client.listen("error", (error) => notice(explain(error)));
}

function memberChange(room, user, present) {
  const info = state.rooms.get(room);
  if (!info) return;
  const members = new Set(info.members);
  if (present) members.add(user); else members.delete(user);
  info.members = [...members].sort();
  renderRooms();
  if (room === state.active) renderRoom();
}

// --- reconnecting ---------------------------------------------------------------------

// Subscribe through the client to a room's channel (Join has put us in it), so the
// client keeps its position and recovers what is missed across a reconnect.
async function follow(room) {
  if (!room.startsWith("dm:")) await state.client.subscribe(`room:${room}`);
}

// After a reconnect the client has subscribed again and recovered the messages sent
// meanwhile: refresh the lists, and be in this page's rooms again (Join answers
// without a new broadcast for a room the connection is already in).
async function rejoin() {
  for (const room of await state.client.call("Rooms")) state.rooms.set(room.name, room);
  state.online = await state.client.call("Online");
  for (const room of state.joined) {
    if (room.startsWith("dm:")) continue;
    const answer = await state.client.call("Join", { room });
    const info = state.rooms.get(room);
    if (info) info.members = answer.members;
  }
  renderRooms();
  renderRoom();
}

// What a channel's recovery gave: a notice for missed messages, or, when its history
// no longer reached back, its rooms' messages loaded again.
async function recovered({ channel, recovered: complete, missed }) {
  if (complete) {
    if (missed) notice(`caught up: ${missed} update${missed === 1 ? "" : "s"} sent while you were offline`);
    return;
  }
  const rooms = channel.startsWith("room:") ? [channel.slice(5)]
    : [...state.joined].filter((room) => room.startsWith("dm:"));
  for (const room of rooms) {
    state.messages.set(room, await state.client.call("History", { room }));
    if (room === state.active) renderRoom();
  }
}

// --- logging in -------------------------------------------------------------------------

// Fetch the rooms and (re-)enter the rooms this page was in: after logging in,
// and again after a reconnect (the server forgets a connection's rooms with it).
async function resume() {
  await state.client.subscribe(`user:${state.me}`);
  for (const room of await state.client.call("Rooms")) state.rooms.set(room.name, room);
  state.online = await state.client.call("Online");
  const rooms = state.joined.size ? [...state.joined] : ["lobby"];
  const active = state.active || rooms[0];
  state.joined.clear();
  state.dms.clear();
  state.active = "";
  for (const room of rooms) if (room !== active) await open(room).catch(() => {});
  await open(active);
}

// Logging in goes through the session endpoint: the password is sent once, in
// a POST body; every connect (reconnects too) carries a one-use ticket only,
// and a reload of the page resumes the session kept in sessionStorage.
const session = new Session();

function setBusy(busy) {
  for (const button of document.querySelectorAll("#login-form button")) button.disabled = busy;
}

async function login(header) {
  const name = $("name").value.trim();
  const password = $("password").value;
  const error = $("login-error");
  error.hidden = true;
  if (!name || !password) {
    error.textContent = "Enter a name and a password.";
    error.hidden = false;
    return;
  }
  setBusy(true);
  try {
    await session.login({ [header]: { name, password } }, { name });
    $("password").value = "";
    await enter(name);
  } catch (failure) {
    error.textContent = failure instanceof RefusedError
      ? refusal(failure.reason) : `Cannot connect: ${explain(failure)}`;
    error.hidden = false;
  } finally {
    setBusy(false);
  }
}

// Connect with the session's tickets as `name`; show the chat. Rejects when refused.
async function enter(name) {
  const client = new Client({ query: session.query });
  listen(client);
  try {
    await client.connect();
    await client.subscribe("public");
  } catch (failure) {
    client.close();
    throw failure;
  }
  state.client = client;
  state.me = name;
  $("me").textContent = name;
  $("logout").hidden = false;
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  await resume();
}

// After a reload: the session kept in this tab logs in again without a password.
async function restore() {
  if (!session.active || !session.info?.name) return;
  try {
    await enter(session.info.name);
  } catch (failure) {
    const reason = failure instanceof RefusedError ? failure.reason : explain(failure);
    logout(reason);
  }
}

function logout(reason) {
  session.logout();
  if (state.client) state.client.close();
  Object.assign(state, { client: null, me: "", active: "", online: [] });
  for (const key of ["rooms", "joined", "dms", "messages", "unread"]) state[key].clear();
  $("me").textContent = "";
  $("logout").hidden = true;
  $("chat-view").hidden = true;
  $("login-view").hidden = false;
  const error = $("login-error");
  error.hidden = !reason;
  error.textContent = reason ? refusal(reason) : "";
  $("name").focus();
}

$("login-form").addEventListener("submit", (event) => { event.preventDefault(); login("Login"); });
$("register").addEventListener("click", () => login("Register"));
$("logout").addEventListener("click", () => logout(""));
$("leave").addEventListener("click", () => { leave().catch(() => {}); });
$("composer").addEventListener("submit", send);
$("new-room").addEventListener("submit", (event) => { createRoom(event).catch(() => {}); });
$("name").focus();
restore();
