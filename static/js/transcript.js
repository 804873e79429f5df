// The transcript fold: a conversation channel's messages -> each reply's parts, text and status.
//
// The browser's half of one fold: conversations/transcript.py is the same rules in Python (the
// agent's recovery, the tests' devices, the bench, the soak), and tests/unit/test_transcript.py
// runs both on the recorded transcripts in tests/fixtures/transcripts/ so they agree by test.
// No DOM here: conversation.js decorates each reply this creates and renders what changed.
//
// Rules (see conversations/transcript.py for the reasons):
// - agent-only names count only from the agent's clientId; anything else is ignored;
// - a reply is keyed by headers.responseId; the first `stop` is final, and nothing after it
//   changes the reply (every stop's status is still kept in `stops`);
// - `response`: per message serial each operation applies once, in version order (create once
//   per serial; append only if its version is newer; update unless its version is older);
// - `token`: fragments by seq, shown in seq order, a doubled seq dropped;
// - `snapshot`: the whole part so far, covering fragments below headers.seq (else all so far).

import { headersOf } from "./realtime.js";

// Ably's wire numbers for message actions, as ably-js names them.
const ACTION_NAMES = ["message.create", "message.update", "message.delete", "meta", "message.summary", "message.append"];

/** One part of a reply. message-per-response: `value`; message-per-token: `base` + fragments. */
export function newPart() {
  return { value: "", base: "", baseSeq: 0, fragments: new Map() };
}

/** The text a part shows now. */
export function partText(part) {
  if (part.fragments.size === 0) return part.value;
  const seqs = [...part.fragments.keys()].filter((seq) => seq >= part.baseSeq).sort((a, b) => a - b);
  return part.base + seqs.map((seq) => part.fragments.get(seq)).join("");
}

/** A reply's fold state: conversation.js adds its element and render timer to the same object. */
export function newReply(contract, responseId, promptId) {
  return {
    responseId,
    promptId,
    model: "",
    parts: { [contract.parts.text]: newPart(), [contract.parts.thinking]: newPart() },
    status: contract.statuses.streaming,
    final: false,
    stopReason: null,
    error: "",
    stops: [],
  };
}

function actionOf(message) {
  const action = message.action;
  if (action === undefined || action === null) return "message.create"; // a hand-built message
  if (Number.isInteger(action)) return ACTION_NAMES[action] || null;
  return typeof action === "string" ? action : null;
}

function versionSerialOf(message) {
  const serial = message.version && message.version.serial;
  return typeof serial === "string" && serial ? serial : null;
}

function seqOf(value) {
  if (Number.isInteger(value)) return value;
  return typeof value === "string" && /^-?\d+$/.test(value) ? Number(value) : null;
}

/**
 * The fold over one channel. `agentClientId`: whose agent-only messages count.
 * `onNewReply(reply)`: called once for each reply first heard of, after it joined `replies`.
 * `apply(message)` returns null (not an agent message), {ignored: reason}, {refusal}, or
 * {reply, changed, finished}: `changed` when what the reply shows may differ, `finished` when
 * this message made it final.
 */
export function createTranscript(contract, { agentClientId, onNewReply = () => {} } = {}) {
  const NAMES = contract.names;
  const AGENT_NAMES = new Set(contract.agentNames);
  const FINAL_STATUSES = new Set(contract.finalStatuses);
  const replies = new Map(); // responseId -> reply, in the order first heard of
  const refusals = [];
  const created = new Set(); // message-per-response: serials whose create was applied
  const versionBySerial = new Map(); // message serial -> last version serial applied

  function replyFor(responseId, headers) {
    const promptId = typeof headers.promptId === "string" && headers.promptId ? headers.promptId : undefined;
    let reply = replies.get(responseId);
    if (reply) {
      if (promptId && !reply.promptId) reply.promptId = promptId;
    } else {
      reply = newReply(contract, responseId, promptId);
      replies.set(responseId, reply);
      onNewReply(reply);
    }
    if (!reply.model && typeof headers.model === "string") reply.model = headers.model;
    return reply;
  }

  // An operation on a message serial applies once, in version order. A history item is the
  // aggregate up to its version serial, so a queued live append already folded into it has a
  // version serial no greater than the one recorded here.
  function isNewVersion(message, action) {
    const serial = typeof message.serial === "string" && message.serial ? message.serial : null;
    if (action === "message.create") {
      if (!serial) return true;
      if (created.has(serial) || versionBySerial.has(serial)) return false;
      created.add(serial);
      return true;
    }
    const version = versionSerialOf(message);
    // ably-js fills a missing version serial with the message serial: then order is unknowable.
    if (!serial || !version || version === serial) return true;
    const seen = versionBySerial.get(serial);
    if (seen !== undefined && (version < seen || (action === "message.append" && version === seen))) return false;
    versionBySerial.set(serial, version);
    return true;
  }

  function applyResponse(part, message, data) {
    const action = actionOf(message);
    if (action !== "message.create" && action !== "message.append" && action !== "message.update") return false;
    if (!isNewVersion(message, action)) return false;
    if (action === "message.append") part.value += data;
    else part.value = data;
    return true;
  }

  function applySnapshot(part, seq, data) {
    if (seq !== null && seq < part.baseSeq) return false; // older than a snapshot applied
    const seqs = [...part.fragments.keys()];
    // Without a seq the snapshot covers every fragment received before it.
    const covered = Math.max(part.baseSeq, seq !== null ? seq : seqs.length ? Math.max(...seqs) + 1 : 0);
    part.base = data;
    part.value = data;
    part.baseSeq = covered;
    for (const each of seqs) if (each < covered) part.fragments.delete(each);
    return true;
  }

  function apply(message) {
    if (!AGENT_NAMES.has(message.name)) return null;
    if (agentClientId !== undefined && agentClientId !== null && message.clientId !== agentClientId) {
      return { ignored: `${message.name} from untrusted client ${message.clientId}` };
    }
    const headers = headersOf(message);
    const data = typeof message.data === "string" ? message.data : "";
    if (message.name === NAMES.refusal) {
      const refusal = { promptId: typeof headers.promptId === "string" ? headers.promptId : undefined, message: data };
      refusals.push(refusal);
      return { refusal };
    }
    const responseId = headers.responseId;
    if (typeof responseId !== "string" || !responseId) return { ignored: `${message.name} without responseId` };
    const reply = replyFor(responseId, headers);
    if (message.name === NAMES.stop) {
      const status = FINAL_STATUSES.has(headers.status) ? headers.status : contract.statuses.complete;
      reply.stops.push(status);
      if (reply.final) return { reply, changed: false, finished: false };
      reply.status = status;
      reply.final = true;
      reply.stopReason = typeof headers.stopReason === "string" ? headers.stopReason : null;
      reply.error = data;
      return { reply, changed: true, finished: true };
    }
    if (reply.final) return { reply, changed: false, finished: false };
    const part = reply.parts[headers.part] || reply.parts[contract.parts.text];
    let changed = false;
    if (message.name === NAMES.start) {
      changed = true;
    } else if (message.name === NAMES.response) {
      changed = applyResponse(part, message, data);
    } else if (message.name === NAMES.token) {
      const seq = seqOf(headers.seq);
      if (seq !== null && seq >= part.baseSeq && !part.fragments.has(seq)) {
        part.fragments.set(seq, data);
        changed = true;
      }
    } else if (message.name === NAMES.snapshot) {
      changed = applySnapshot(part, seqOf(headers.seq), data);
    }
    return { reply, changed, finished: false };
  }

  return { replies, refusals, apply };
}
