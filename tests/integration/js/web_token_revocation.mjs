// A browser's view of deleting a conversation, in Node: ably-js authenticates through Django's
// /ably/token (session cookie), attaches DELETED_CHANNEL and KEPT_CHANNEL, and hands its token
// to the test, which deletes the first conversation. Then: does ably-js re-authenticate on its
// own, what can the renewed connection still reach, and what can the old token still do?
import Ably from 'ably';
import { clientOptions, done, emit, input, waitFor } from './ably_env.mjs';

const deletedName = process.env.DELETED_CHANNEL;
const keptName = process.env.KEPT_CHANNEL;
const options = clientOptions({
  authUrl: process.env.TOKEN_URL,
  authHeaders: { Cookie: process.env.SESSION_COOKIE },
});
delete options.key;
const client = new Ably.Realtime(options);
const states = [];
client.connection.on((change) =>
  states.push({ state: change.current, code: change.reason?.code ?? null }),
);
await client.connection.once('connected');

const deleted = client.channels.get(deletedName);
const kept = client.channels.get(keptName);
const keptMessages = [];
await kept.subscribe((message) => keptMessages.push(message.data));
await deleted.subscribe(() => {});
const deletedChannelErrors = [];
deleted.on((change) => {
  if (change.reason) deletedChannelErrors.push(change.reason.code);
});

const oldToken = client.auth.tokenDetails.token;
emit({ ready: true, connectionId: client.connection.id });
await input(); // the test has deleted the conversation

// ably-js renews through the callback and resumes, without the application doing anything.
await waitFor(
  () => states.some((s) => s.code === 40141) && client.connection.state === 'connected',
  'a 40141 disconnect and a renewed connection',
);
await waitFor(() => kept.state === 'attached', 'the kept channel re-attached');
let deletedAttachError = null;
try {
  await deleted.attach();
} catch (err) {
  deletedAttachError = err.code ?? String(err);
}
emit({ renewed: true });
await input(); // the test has published on the kept channel
await waitFor(() => keptMessages.includes('still live'), 'a message on the kept channel');

// The old token, used directly as an attacker holding it would.
const stale = new Ably.Realtime(
  clientOptions({ key: undefined, token: oldToken, disconnectedRetryTimeout: 60000 }),
);
const staleError = await new Promise((resolve) => {
  stale.connection.on((change) => {
    if (change.reason) resolve(change.reason.code);
  });
});
stale.close();
let staleRestError = null;
try {
  await new Ably.Rest(clientOptions({ key: undefined, token: oldToken }))
    .channels.get(deletedName)
    .history();
} catch (err) {
  staleRestError = err.code ?? String(err);
}

const result = {
  sawRevocation: states.some((s) => s.state === 'disconnected' && s.code === 40141),
  finalState: client.connection.state,
  sameConnection: client.connection.id,
  keptState: kept.state,
  keptMessages,
  deletedAttachError,
  deletedChannelErrors,
  staleError,
  staleRestError,
};
client.close();
done(result);
