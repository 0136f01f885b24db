// Calls as the relay tells them (call_state carries the whole CallInfo each time), the buttons to
// ring, answer, decline and hang up, and a resync from the REST history after a reconnect.

export class CallView {
  #calls = new Map(); // call id -> CallInfo, in the order first heard of
  #request;
  #me;
  #nameOf;
  #onChange;
  #onError;

  constructor({ request, me, nameOf, onChange, onError }) {
    this.#request = request;
    this.#me = me;
    this.#nameOf = nameOf;
    this.#onChange = onChange;
    this.#onError = onError;
    document.querySelector("#call-all").onclick = () => this.#ui(this.start());
    document.querySelector("#hang-up").onclick = () => this.#ui(this.hangUp());
  }

  onMessage(message) {
    if (message.type === "call_state") this.#update(message.call);
    else if (message.type === "incoming_call" && !this.#calls.has(message.call_id)) {
      // call_state follows at once; until then it is a ringing call from its initiator.
      this.#update({
        call_id: message.call_id,
        status: "ringing",
        started_by: message.from_peer_id,
        participants: message.participants,
        targets: message.targets ?? [this.#me()],
        declined_by: [],
      });
    }
  }

  #update(call) {
    this.#calls.set(call.call_id, call);
    this.#onChange();
  }

  clear() {
    this.#calls.clear();
    this.render();
  }

  /** After a resume: calls may have changed while we were away (their call_state was dropped). */
  async resync(room) {
    const limit = 100; // the relay's largest page
    const response = await fetch(`/rooms/${encodeURIComponent(room)}/calls?limit=${limit}`);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const me = this.#me();
    const history = (await response.json()).calls;
    const listed = new Set();
    for (const call of history.reverse()) {
      listed.add(call.call_id);
      if (call.started_by === me || call.targets.includes(me)) this.#calls.set(call.call_id, call);
    }
    // A call we still hold open that the history does not list: with a short history the relay
    // does not know it (restarted without its database), so it is over for us too; with a full
    // page it may just be older, so ask for it alone.
    for (const call of [...this.#calls.values()]) {
      if (call.status === "ended" || listed.has(call.call_id)) continue;
      let known = null;
      if (history.length === limit) {
        const one = await fetch(`/calls/${encodeURIComponent(call.call_id)}`);
        if (one.ok) known = (await one.json()).call;
        else if (one.status !== 404) throw new Error(`HTTP ${one.status}`);
      }
      this.#calls.set(call.call_id, known ?? { ...call, status: "ended", reason: "relay_restart" });
    }
    this.#onChange();
  }

  list() {
    return [...this.#calls.values()].map((call) => ({
      callId: call.call_id,
      status: call.status,
      participants: call.participants,
      startedBy: call.started_by,
      targets: call.targets,
      declinedBy: call.declined_by,
      reason: call.reason ?? null,
    }));
  }

  /** The other participants of the active call we are in (call mode links with them). */
  activePartners() {
    const me = this.#me();
    const call = [...this.#calls.values()].find(
      (c) => c.status === "active" && c.participants.includes(me),
    );
    return call ? call.participants.filter((id) => id !== me) : [];
  }

  /** Our call in progress: active with us in it, or ringing and started by us. */
  #current() {
    const me = this.#me();
    return [...this.#calls.values()].find(
      (c) =>
        (c.status === "active" && c.participants.includes(me)) ||
        (c.status === "ringing" && c.started_by === me),
    );
  }

  #ringingForMe() {
    const me = this.#me();
    return [...this.#calls.values()].filter(
      (c) =>
        c.status === "ringing" &&
        c.targets.includes(me) &&
        !c.participants.includes(me) &&
        !c.declined_by.includes(me),
    );
  }

  async start(targets) {
    const reply = await this.#request({ type: "start_call", ...(targets && { targets }) });
    return reply.call.call_id;
  }

  async accept(callId) {
    return (await this.#request({ type: "accept_call", call_id: callId })).call.status;
  }

  async decline(callId) {
    return (await this.#request({ type: "decline_call", call_id: callId })).call.status;
  }

  async hangUp() {
    const call = this.#current();
    if (call) {
      // A two-party call ends for both (end_call); from a bigger one we only leave.
      const leaveOnly = call.status === "active" && call.participants.length > 2;
      const type = leaveOnly ? "leave_call" : "end_call";
      return (await this.#request({ type, call_id: call.call_id })).call.status;
    }
    const [ringing] = this.#ringingForMe();
    if (ringing) return this.decline(ringing.call_id);
    throw new Error("no call to hang up");
  }

  #ui(promise) {
    promise.catch((error) => this.#onError(error.message));
  }

  render() {
    const current = this.#current();
    const status = document.querySelector("#call-status");
    if (current) {
      const others = current.participants.filter((id) => id !== this.#me()).map(this.#nameOf);
      status.textContent =
        current.status === "active"
          ? `in call with ${others.join(", ") || "nobody yet"}`
          : `ringing ${current.targets.map(this.#nameOf).join(", ")}…`;
    } else {
      const last = [...this.#calls.values()].at(-1);
      status.textContent = last?.status === "ended" ? `last call ended (${last.reason})` : "";
    }
    document.querySelector("#hang-up").hidden = !current;
    document.querySelector("#call-all").disabled = Boolean(current);
    for (const button of document.querySelectorAll("#grid .call")) button.disabled = Boolean(current);

    const incoming = document.querySelector("#incoming");
    incoming.replaceChildren();
    for (const call of this.#ringingForMe()) {
      const row = document.querySelector("#incoming-template").content.firstElementChild.cloneNode(true);
      row.dataset.callId = call.call_id;
      row.querySelector(".from").textContent = this.#nameOf(call.started_by);
      row.querySelector(".answer").onclick = () => this.#ui(this.accept(call.call_id));
      row.querySelector(".decline").onclick = () => this.#ui(this.decline(call.call_id));
      incoming.append(row);
    }
    incoming.hidden = incoming.childElementCount === 0;
  }
}
