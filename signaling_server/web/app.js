// The callbot web client: join a room, show everyone's video, ring, chat.
// URL parameters and the window.callbot test hooks are described in docs/web-client.md.

import { Signaling } from "./signaling.js";
import { PeerLink } from "./peers.js";
import { CallView } from "./calls.js";

const params = new URLSearchParams(location.search);
const settings = {
  room: params.get("room") ?? "",
  name: params.get("name") ?? "",
  autojoin: params.get("autojoin") === "1",
  codec: { vp8: "VP8", h264: "H264" }[params.get("codec")?.toLowerCase()] ?? null,
  mode: params.get("mode") === "call" ? "call" : "room",
  audio: params.get("audio") !== "0",
  video: params.get("video") !== "0",
};

const $ = (selector) => document.querySelector(selector);
//: After a resume, a linked peer missing from the new roster keeps its link this long: after a
//: relay restart everyone comes back one by one, and media never needed the relay anyway.
const LINGER_MS = 20_000;
const state = {
  signaling: null,
  peerId: null,
  room: null,
  config: { iceServers: [] },
  localTracks: [], // [{track, stream}] sent to every link
  roster: new Map(), // peer id -> name (the others in the room)
  lingering: new Map(), // peer id -> timer: linked, not in the roster, kept for a while
  links: new Map(), // peer id -> {link, tile}
  errors: [],
  messages: [],
};
const calls = new CallView({
  request: (message) => state.signaling.request(message),
  me: () => state.peerId,
  nameOf: (id) => state.roster.get(id) ?? id,
  onChange: () => reconcile(),
  onError: (text) => reportError(text),
});

// --- errors -------------------------------------------------------------------------------

function reportError(text) {
  state.errors.push(text);
  const item = document.createElement("li");
  item.textContent = text;
  $("#errors").append(item);
  $("#errors").hidden = false;
}

// --- joining ------------------------------------------------------------------------------

async function join(room, name) {
  if (state.signaling) return;
  settings.room = room;
  settings.name = name;
  $("#join-form").hidden = true;
  $("#room-title").textContent = room;
  await startLocalMedia();
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const signaling = new Signaling(url.href, { room, name });
  state.signaling = signaling;
  signaling.addEventListener("state", ({ detail }) => showRelayState(detail));
  signaling.addEventListener("message", ({ detail }) => onMessage(detail));
  signaling.start();
  $("#session").hidden = false;
}

function leave() {
  state.signaling?.close();
  state.signaling = null;
  for (const id of [...state.links.keys()]) dropLink(id);
  for (const id of [...state.lingering.keys()]) stopLingering(id);
  state.roster.clear();
  calls.clear();
  state.peerId = null;
  // The camera goes off, and a rejoin asks for it again instead of sending these twice.
  for (const { track } of state.localTracks) track.stop();
  state.localTracks.length = 0;
  $("#local video").srcObject = null;
  $("#session").hidden = true;
  $("#join-form").hidden = false;
}

async function startLocalMedia() {
  if (!settings.audio && !settings.video) return;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: settings.audio,
      video: settings.video,
    });
    for (const track of stream.getTracks()) state.localTracks.push({ track, stream });
    const video = $("#local video");
    video.srcObject = stream;
    play(video);
  } catch (error) {
    reportError(`camera/microphone unavailable (${error.name}: ${error.message}); joining without`);
  }
}

function showRelayState({ state: relayState, attempt, reason }) {
  let text = relayState;
  if (relayState === "reconnecting") text = `reconnecting (attempt ${attempt})`;
  if (relayState === "closed" && reason) text = `disconnected: ${reason}`;
  $("#relay-state").textContent = text;
  $("#relay-state").dataset.state = relayState;
}

// --- relay messages -----------------------------------------------------------------------

function onMessage(message) {
  switch (message.type) {
    case "welcome":
      return onWelcome(message);
    case "peer_joined":
      stopLingering(message.peer_id);
      state.roster.set(message.peer_id, message.name);
      state.links.get(message.peer_id)?.tile.setName(message.name);
      return reconcile();
    case "peer_left":
      stopLingering(message.peer_id);
      state.roster.delete(message.peer_id);
      return reconcile();
    case "peer_list":
      state.roster = new Map(message.peers.map((p) => [p.peer_id, p.name]));
      return reconcile();
    case "offer":
    case "answer":
    case "ice_candidate":
      return onNegotiation(message);
    case "incoming_call":
    case "call_state":
      return calls.onMessage(message);
    case "error":
      return reportError(`relay refused a message: ${message.code}: ${message.message}`);
  }
}

function onWelcome(welcome) {
  const sameIdentity = welcome.resumed === true && welcome.peer_id === state.peerId;
  if (!sameIdentity) {
    // A new peer (first join, or a resume the relay did not honour): every link starts over.
    for (const id of [...state.links.keys()]) dropLink(id);
    for (const id of [...state.lingering.keys()]) stopLingering(id);
    calls.clear();
  }
  state.peerId = welcome.peer_id;
  state.room = welcome.room;
  state.config = {
    iceServers: welcome.ice_servers.map(({ urls, username, credential }) => ({
      urls,
      ...(username !== undefined && { username }),
      ...(credential !== undefined && { credential }),
    })),
  };
  state.roster = new Map(welcome.peers.map((p) => [p.peer_id, p.name]));
  for (const id of state.links.keys()) {
    if (!state.roster.has(id) && !state.lingering.has(id)) {
      const expire = () => {
        stopLingering(id);
        reconcile();
      };
      state.lingering.set(id, setTimeout(expire, LINGER_MS));
    }
  }
  for (const id of state.roster.keys()) stopLingering(id);
  $("#local .name").textContent = `${settings.name || "me"} (you, ${welcome.peer_id})`;
  if (sameIdentity) calls.resync(state.room).catch((e) => reportError(`call resync: ${e.message}`));
  reconcile();
}

function stopLingering(id) {
  clearTimeout(state.lingering.get(id));
  state.lingering.delete(id);
}

function onNegotiation(message) {
  const from = message.from_peer_id;
  let entry = state.links.get(from);
  // An offer from a peer we would link with anyway, before we noticed (e.g. a fresh resume).
  if (!entry && message.type === "offer" && wantedPeers().has(from)) entry = addLink(from);
  entry?.link.handle(message);
}

// --- links and tiles ----------------------------------------------------------------------

/** Room mode: everyone in the room. Call mode: the other participants of our active call.
 *  Either way, plus the lingering peers (linked before a resume, not back yet). */
function wantedPeers() {
  if (!state.peerId) return new Set();
  const present = (id) => state.roster.has(id) || state.lingering.has(id);
  if (settings.mode === "room") return new Set([...state.roster.keys(), ...state.lingering.keys()]);
  return new Set(calls.activePartners().filter(present));
}

function reconcile() {
  const wanted = wantedPeers();
  for (const id of [...state.links.keys()]) if (!wanted.has(id)) dropLink(id);
  for (const id of wanted) if (!state.links.has(id)) addLink(id);
  calls.render();
}

function addLink(id) {
  const link = new PeerLink({
    localId: state.peerId,
    remoteId: id,
    name: state.roster.get(id) ?? id,
    config: state.config,
    codec: settings.codec,
    localTracks: state.localTracks,
    signal: (message) => state.signaling?.send(message),
    onError: reportError,
  });
  const tile = new Tile(id, link.name, () => calls.start([id]));
  link.addEventListener("track", ({ detail }) => tile.addTrack(detail.track));
  link.addEventListener("reset", () => tile.clear());
  link.addEventListener("state", () => tile.setState(link));
  link.addEventListener("message", ({ detail }) => onChat(id, detail.data));
  tile.setState(link);
  const entry = { link, tile };
  state.links.set(id, entry);
  return entry;
}

function dropLink(id) {
  const entry = state.links.get(id);
  if (!entry) return;
  state.links.delete(id);
  entry.link.close();
  entry.tile.remove();
}

class Tile {
  constructor(id, name, onCall) {
    this.element = $("#tile-template").content.firstElementChild.cloneNode(true);
    this.element.dataset.peerId = id;
    this.videos = this.element.querySelector(".videos");
    this.audio = this.element.querySelector("audio");
    this.audio.srcObject = new MediaStream();
    this.element.querySelector(".call").onclick = onCall;
    this.setName(name);
    $("#grid").append(this.element);
  }

  setName(name) {
    this.element.querySelector(".name").textContent = name;
  }

  setState(link) {
    const dc = link.dc?.readyState === "open" ? " · chat" : "";
    this.element.querySelector(".state").textContent = link.connectionState + dc;
    this.element.dataset.state = link.connectionState;
  }

  addTrack(track) {
    if (track.kind === "audio") {
      this.audio.srcObject.addTrack(track);
      play(this.audio);
      return;
    }
    const video = document.createElement("video");
    video.autoplay = video.playsInline = video.muted = true;
    video.srcObject = new MediaStream([track]);
    this.videos.append(video);
    play(video);
  }

  clear() {
    this.videos.replaceChildren();
    this.audio.srcObject = new MediaStream();
  }

  remove() {
    this.element.remove();
  }
}

function play(media) {
  // Autoplay may be refused until the user interacts; the element starts on its own later.
  media.play().catch(() => {});
}

// --- chat ---------------------------------------------------------------------------------

function onChat(from, data) {
  const text = typeof data === "string" ? data : `[${data.byteLength} bytes]`;
  state.messages.push({ from, data: typeof data === "string" ? data : [...new Uint8Array(data)] });
  appendChat(state.roster.get(from) ?? from, text);
}

function appendChat(who, text) {
  const line = document.createElement("li");
  const author = document.createElement("b");
  author.textContent = `${who}: `;
  line.append(author, text);
  $("#chat-log").append(line);
}

function sendChat(text) {
  let sent = 0;
  for (const { link } of state.links.values()) {
    if (link.dc?.readyState === "open") {
      link.send(text);
      sent += 1;
    }
  }
  if (sent === 0) reportError("nobody to chat with yet (no open data channel)");
  else appendChat("me", text);
}

// --- a second camera (renegotiation) ------------------------------------------------------

async function addVideoTrack() {
  const stream = await navigator.mediaDevices.getUserMedia({ video: true });
  const [track] = stream.getVideoTracks();
  state.localTracks.push({ track, stream });
  for (const { link } of state.links.values()) link.addTrack(track, stream);
  return track.id;
}

// --- wiring -------------------------------------------------------------------------------

window.callbot = {
  get peerId() {
    return state.peerId;
  },
  get mode() {
    return settings.mode;
  },
  errors: state.errors,
  messages: state.messages,
  join: (room = settings.room, name = settings.name) => join(room, name),
  leave,
  peers: () =>
    [...state.links.entries()].map(([peerId, { link }]) => ({
      peerId,
      name: state.roster.get(peerId) ?? link.name,
      connectionState: link.connectionState,
      tracks: link.trackCount,
    })),
  stats: async (peerId) => {
    const entry = state.links.get(peerId);
    if (!entry) throw new Error(`no link to ${peerId}`);
    return entry.link.stats();
  },
  send: (peerId, data) => {
    const entry = state.links.get(peerId);
    if (!entry) throw new Error(`no link to ${peerId}`);
    entry.link.send(data);
  },
  addVideoTrack,
  startCall: (targets) => calls.start(targets),
  accept: (callId) => calls.accept(callId),
  decline: (callId) => calls.decline(callId),
  hangUp: () => calls.hangUp(),
  calls: () => calls.list(),
};

$("#room").value = settings.room;
$("#name").value = settings.name;
$("#mode").textContent = settings.mode === "call" ? "call mode" : "room mode";
$("#join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  join($("#room").value.trim(), $("#name").value.trim()).catch((e) => reportError(e.message));
});
$("#leave").onclick = leave;
$("#chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("#chat-input").value;
  if (!text) return;
  $("#chat-input").value = "";
  sendChat(text);
});
if (settings.autojoin && settings.room) {
  join(settings.room, settings.name).catch((e) => reportError(e.message));
}
