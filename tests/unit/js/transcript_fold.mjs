// Folds recorded channel transcripts with the browser's fold (static/js/transcript.js) and prints
// what a page would show after every message, for tests/unit/test_transcript.py to compare with
// the Python fold (conversations/transcript.py).
// stdin: {"contract": events.client_contract(), "fixtures": {name: {agentClientId, messages}}}.
// stdout: one JSON line {name: {"wire": [state...], "decoded": [state...]}}: "wire" folds the
// messages as recorded (numeric actions), "decoded" as ably-js hands them to the page
// (actions named); a state is {replies: [[responseId, promptId, text, thinking, status, final,
// error, stops]...], refusals: [[promptId, message]...]}.
import { readFileSync } from "node:fs";
import { createTranscript, partText } from "../../../static/js/transcript.js";

const ACTION_NAMES = ["message.create", "message.update", "message.delete", "meta", "message.summary", "message.append"];
const { contract, fixtures } = JSON.parse(readFileSync(0, "utf8"));

function state(transcript) {
  return {
    replies: [...transcript.replies.values()].map((reply) => [
      reply.responseId,
      reply.promptId || "",
      partText(reply.parts[contract.parts.text]),
      partText(reply.parts[contract.parts.thinking]),
      reply.status,
      reply.final,
      reply.error,
      [...reply.stops],
    ]),
    refusals: transcript.refusals.map((refusal) => [refusal.promptId ?? null, refusal.message]),
  };
}

function steps(fixture, decode) {
  const transcript = createTranscript(contract, { agentClientId: fixture.agentClientId });
  return fixture.messages.map((message) => {
    const delivered = decode && Number.isInteger(message.action) ? { ...message, action: ACTION_NAMES[message.action] } : message;
    transcript.apply(delivered);
    return state(transcript);
  });
}

const report = {};
for (const [name, fixture] of Object.entries(fixtures)) {
  report[name] = { wire: steps(fixture, false), decoded: steps(fixture, true) };
}
console.log(JSON.stringify(report));
