// One RTCPeerConnection per remote peer, following the contract with callbot's Python
// participant (docs/web-client.md):
// - the smaller peer id makes the first offer; the larger one waits for it;
// - both sides create the data channel "callbot" pre-negotiated with id 0 before that offer;
// - later offers may come from either side on the same connection ("perfect negotiation"): on
//   glare the smaller id is impolite (ignores the other offer), the larger one polite (rolls back);
// - an offer with a new ice-ufrag means the other side rebuilt its connection: so do we;
// - ICE servers come from the relay's welcome; candidates trickle as ice_candidate messages.
// Events (an EventTarget): "track" {detail: {track}}, "state" (connection state changed),
// "message" {detail: {data}} (data channel), "reset" (remote tracks gone: a new connection).

export const DATA_CHANNEL = { label: "callbot", id: 0 };

export class PeerLink extends EventTarget {
  #signal;
  #config;
  #codec;
  #localTracks;
  #queue = Promise.resolve();
  #ignoreOffer = false;
  #pendingCandidates = [];
  #retryTimer = null;
  #closed = false;
  pc = null;
  dc = null;

  /**
   * localId / remoteId: peer ids; name: the remote's display name; config: RTCConfiguration;
   * codec: "VP8" | "H264" | null; localTracks: [{track, stream}]; signal(msg): send to the relay;
   * onError(text): report a failure.
   */
  constructor({ localId, remoteId, name, config, codec, localTracks, signal, onError }) {
    super();
    this.localId = localId;
    this.remoteId = remoteId;
    this.name = name;
    this.#config = config;
    this.#codec = codec;
    this.#localTracks = [...localTracks];
    this.#signal = signal;
    this.onError = onError;
    this.#build();
  }

  /** The smaller id offers first and is impolite on glare; the larger is polite. */
  get initiator() {
    return this.localId < this.remoteId;
  }

  get polite() {
    return !this.initiator;
  }

  get connectionState() {
    return this.pc?.connectionState ?? "closed";
  }

  /** How many remote media tracks this connection currently receives. */
  get trackCount() {
    if (!this.pc) return 0;
    return this.pc
      .getTransceivers()
      .filter((t) => !t.stopped && ["sendrecv", "recvonly"].includes(t.currentDirection)).length;
  }

  #build() {
    const pc = new RTCPeerConnection(this.#config);
    this.pc = pc;
    // Pre-negotiated on both sides, before the first offer/answer (contract rule 2).
    this.dc = pc.createDataChannel(DATA_CHANNEL.label, { negotiated: true, id: DATA_CHANNEL.id });
    this.dc.binaryType = "arraybuffer";
    this.dc.onmessage = ({ data }) => this.#emit("message", { data });
    this.dc.onopen = this.dc.onclose = () => this.#emit("state");
    for (const { track, stream } of this.#localTracks) pc.addTrack(track, stream);
    pc.onnegotiationneeded = () => {
      // Only the initiator makes the first offer; the other side waits for it (contract rule
      // 1). Checked now, not when queued: an answer may be about to cover what is needed, and
      // the browser fires the event again after it if anything is still missing.
      if (this.initiator || pc.remoteDescription) this.#enqueue(() => this.#offer(pc));
    };
    pc.onicecandidate = ({ candidate }) => {
      if (pc !== this.pc) return;
      if (candidate === null) {
        this.#send({ type: "ice_candidate", candidate: "" }); // end of candidates
      } else if (candidate.candidate) {
        this.#send({
          type: "ice_candidate",
          candidate: candidate.candidate,
          sdp_mid: candidate.sdpMid ?? undefined,
          sdp_m_line_index: candidate.sdpMLineIndex ?? undefined,
        });
      }
    };
    pc.ontrack = ({ track }) => {
      if (pc === this.pc) this.#emit("track", { track });
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      this.#emit("state");
      // A dead connection is rebuilt by the side that offers first; the other side notices the
      // new ufrag in its offer (contract rule 3).
      if (pc.connectionState === "failed" && this.initiator && !this.#retryTimer) {
        this.#retryTimer = setTimeout(() => {
          this.#retryTimer = null;
          if (!this.#closed && this.pc === pc) this.#rebuild();
        }, 1000);
      }
    };
  }

  #rebuild() {
    const old = this.pc;
    this.#pendingCandidates = [];
    this.#ignoreOffer = false;
    this.#build();
    old.close();
    this.#emit("reset");
    this.#emit("state");
  }

  /** Add a local track (e.g. a second camera): renegotiates on the live connection. */
  addTrack(track, stream) {
    this.#localTracks.push({ track, stream });
    this.pc.addTrack(track, stream);
  }

  send(data) {
    if (this.dc?.readyState !== "open") {
      throw new Error(`data channel to ${this.remoteId} is ${this.dc?.readyState ?? "gone"}`);
    }
    this.dc.send(data);
  }

  /** A signaling message from this peer: offer, answer or ice_candidate (handled in order). */
  handle(message) {
    this.#enqueue(() => this.#handle(message));
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    this.pc?.close();
    this.#emit("state");
  }

  async stats() {
    const report = await this.pc.getStats();
    const codecOf = (stat) => report.get(stat.codecId)?.mimeType?.replace(/^video\//, "") ?? null;
    const rtp = [...report.values()].sort((a, b) => String(a.mid).localeCompare(String(b.mid)));
    const stats = { video: [], audio: [], outboundVideo: [], dataChannelState: this.dc.readyState };
    for (const s of rtp) {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        stats.video.push({
          mid: s.mid ?? null,
          framesDecoded: s.framesDecoded ?? 0,
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          codec: codecOf(s),
        });
      } else if (s.type === "inbound-rtp" && s.kind === "audio") {
        stats.audio.push({
          mid: s.mid ?? null,
          totalAudioEnergy: s.totalAudioEnergy ?? 0,
          totalSamplesReceived: s.totalSamplesReceived ?? 0,
        });
      } else if (s.type === "outbound-rtp" && s.kind === "video") {
        stats.outboundVideo.push({
          mid: s.mid ?? null,
          framesEncoded: s.framesEncoded ?? 0,
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          codec: codecOf(s),
        });
      }
    }
    return stats;
  }

  #enqueue(task) {
    // One signaling step at a time: descriptions and candidates apply in arrival order.
    this.#queue = this.#queue.then(task).catch((error) => {
      if (!this.#closed) this.onError(`link to ${this.name}: ${error.message ?? error}`);
    });
  }

  async #offer(pc) {
    if (this.#closed || pc !== this.pc || pc.signalingState !== "stable") return;
    this.#preferCodec(pc);
    await pc.setLocalDescription();
    this.#send({ type: "offer", sdp: pc.localDescription.sdp });
  }

  async #handle(message) {
    if (this.#closed) return;
    if (message.type === "ice_candidate") return this.#addCandidate(message);
    const description = { type: message.type, sdp: message.sdp };
    if (description.type === "offer" && this.#isNewConnection(description.sdp)) this.#rebuild();
    const pc = this.pc;
    const collision = description.type === "offer" && pc.signalingState !== "stable";
    this.#ignoreOffer = !this.polite && collision;
    if (this.#ignoreOffer) return; // impolite: our offer wins; they roll back and answer it
    if (description.type === "answer" && pc.signalingState !== "have-local-offer") return;
    await pc.setRemoteDescription(description); // polite on glare: an implicit rollback
    for (const candidate of this.#pendingCandidates.splice(0)) await this.#apply(candidate);
    if (description.type === "offer") {
      this.#preferCodec(pc);
      await pc.setLocalDescription();
      this.#send({ type: "answer", sdp: pc.localDescription.sdp });
    }
  }

  /** An offer whose ice-ufrag differs from the current remote description's: a new connection. */
  #isNewConnection(sdp) {
    const current = this.pc.remoteDescription?.sdp;
    return Boolean(current) && iceUfrag(current) !== iceUfrag(sdp);
  }

  async #addCandidate(message) {
    if (!message.candidate) return; // end of candidates: nothing Chromium needs
    const text = message.candidate.startsWith("candidate:")
      ? message.candidate
      : `candidate:${message.candidate}`;
    const candidate = {
      candidate: text,
      sdpMid: message.sdp_mid ?? null,
      sdpMLineIndex: message.sdp_m_line_index ?? (message.sdp_mid == null ? 0 : null),
    };
    if (!this.pc.remoteDescription) {
      this.#pendingCandidates.push(candidate);
      return;
    }
    await this.#apply(candidate);
  }

  async #apply(candidate) {
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (error) {
      if (!this.#ignoreOffer) throw error; // candidates of an offer we ignored may not fit
    }
  }

  #preferCodec(pc) {
    if (!this.#codec) return;
    const codecs = RTCRtpReceiver.getCapabilities("video")?.codecs ?? [];
    const wanted = codecs.filter((c) => c.mimeType.toLowerCase() === `video/${this.#codec}`.toLowerCase());
    if (wanted.length === 0) throw new Error(`this browser cannot receive ${this.#codec}`);
    const preferred = [...wanted, ...codecs.filter((c) => !wanted.includes(c))];
    for (const transceiver of pc.getTransceivers()) {
      if (transceiver.receiver.track.kind === "video" && !transceiver.stopped) {
        transceiver.setCodecPreferences(preferred);
      }
    }
  }

  #send(message) {
    this.#signal({ ...message, target_peer_id: this.remoteId });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function iceUfrag(sdp) {
  return /^a=ice-ufrag:(.*)$/m.exec(sdp)?.[1]?.trim() ?? null;
}
