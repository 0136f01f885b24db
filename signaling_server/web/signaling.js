// Protocol v1 (docs/protocol.md) over one WebSocket that comes back by itself.
//
// A dropped socket (anything but our own close and 4001, "another socket took the session") is
// reopened with exponential backoff and full jitter, and re-joined with the latest resume_token,
// so the relay gives us our peer id back. Events (an EventTarget):
//   "message" {detail: msg}   every message from the relay, in order
//   "state"   {detail: {state, attempt, reason}}   connecting | connected | reconnecting | closed

const FIRST_DELAY_S = 0.25;
const MAX_DELAY_S = 10;

export class Signaling extends EventTarget {
  #url;
  #join;
  #ws = null;
  #resumeToken = null;
  #attempt = 0;
  #timer = null;
  #nextId = 1;
  #pending = new Map(); // id -> {resolve, reject}
  #stopped = false;
  state = "new";

  /** url: the relay's ws:// URL; join: {room, name} sent on every (re)connect. */
  constructor(url, join) {
    super();
    this.#url = url;
    this.#join = join;
  }

  start() {
    this.#stopped = false;
    this.#connect();
  }

  /** Fire and forget. Returns false when the socket is not open (the message is dropped). */
  send(message) {
    if (this.#ws?.readyState !== WebSocket.OPEN) return false;
    this.#ws.send(JSON.stringify(message));
    return true;
  }

  /** Send with an id; resolves with the first reply carrying it as ref, rejects on its error. */
  request(message) {
    const id = `r${this.#nextId++}`;
    return new Promise((resolve, reject) => {
      if (!this.send({ ...message, id })) {
        reject(new Error(`${message.type}: not connected to the relay`));
        return;
      }
      this.#pending.set(id, { resolve, reject });
    });
  }

  /** Leave the room for good: no reconnect. */
  close() {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.send({ type: "leave" });
    this.#ws?.close(1000, "bye");
    this.#ws = null;
    this.#failPending("left the room");
    this.#setState("closed", "left");
  }

  #connect() {
    this.#setState(this.#attempt === 0 ? "connecting" : "reconnecting");
    const ws = new WebSocket(this.#url);
    this.#ws = ws;
    ws.onopen = () => {
      const join = { type: "join", room: this.#join.room, id: "join" };
      if (this.#join.name) join.name = this.#join.name;
      if (this.#resumeToken) join.resume_token = this.#resumeToken;
      ws.send(JSON.stringify(join));
    };
    ws.onmessage = (event) => this.#onMessage(event.data);
    ws.onclose = (event) => {
      if (this.#ws !== ws) return; // an old socket we already gave up on
      this.#ws = null;
      this.#failPending("connection to the relay lost");
      if (this.#stopped) return;
      if (event.code === 4001) {
        this.#setState("closed", "another connection took over this session");
        return;
      }
      this.#attempt += 1;
      const ceiling = Math.min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (this.#attempt - 1));
      const delay = ceiling * (0.5 + Math.random() / 2);
      this.#setState("reconnecting", `closed (${event.code})`);
      this.#timer = setTimeout(() => this.#connect(), delay * 1000);
    };
  }

  #onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // the relay only sends JSON; nothing sensible to do with anything else
    }
    if (message.type === "welcome") {
      this.#resumeToken = message.resume_token;
      this.#attempt = 0;
      this.#setState("connected");
    }
    this.dispatchEvent(new CustomEvent("message", { detail: message }));
    const waiter = message.ref !== undefined && this.#pending.get(message.ref);
    if (waiter) {
      this.#pending.delete(message.ref);
      if (message.type === "error") waiter.reject(new Error(`${message.code}: ${message.message}`));
      else waiter.resolve(message);
    }
  }

  #failPending(reason) {
    for (const { reject } of this.#pending.values()) reject(new Error(reason));
    this.#pending.clear();
  }

  #setState(state, reason = null) {
    this.state = state;
    const detail = { state, attempt: this.#attempt, reason };
    this.dispatchEvent(new CustomEvent("state", { detail }));
  }
}
