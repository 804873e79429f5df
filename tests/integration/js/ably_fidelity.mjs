// ably-js details its own test suite checks: the comet (HTTP long-poll) transport, channel modes
// from params, invalid channel names, and a new connection key on every recover.
import Ably from 'ably';
import { clientOptions, done, waitFor } from './ably_env.mjs';

const result = {};

// Comet: a client that cannot use WebSockets talks to one that does.
const comet = new Ably.Realtime(clientOptions({ clientId: 'comet', transports: ['comet'] }));
const socket = new Ably.Realtime(clientOptions({ clientId: 'socket' }));
await Promise.all([comet.connection.once('connected'), socket.connection.once('connected')]);
result.cometTransport = comet.connection.connectionManager.activeProtocol.transport.shortName;
const overComet = comet.channels.get('fidelity:comet');
const overSocket = socket.channels.get('fidelity:comet');
const heardByComet = [];
const heardBySocket = [];
await overComet.subscribe((m) => heardByComet.push(m.data));
await overSocket.subscribe((m) => heardBySocket.push(m.data));
await overComet.publish('n', 'from comet');
await overSocket.publish('n', 'from socket');
// The enter's ACK reaches the comet client and the PRESENCE broadcast reaches the socket client
// independently (as on Ably), so the socket side waits to see the member rather than racing it.
const membersSeenBySocket = [];
await overSocket.presence.subscribe('enter', (m) => membersSeenBySocket.push(m.clientId));
await overComet.presence.enter('here');
await waitFor(() => heardByComet.length === 2 && heardBySocket.length === 2, 'both messages both ways');
await waitFor(() => membersSeenBySocket.length === 1, 'the comet member entering, seen over the socket');
result.heardByComet = heardByComet;
result.heardBySocket = heardBySocket;
result.membersSeenBySocket = (await overSocket.presence.get()).map((m) => m.clientId);
comet.close();
await comet.connection.once('closed');
result.cometClosed = comet.connection.state;

// Modes requested through params: subscribe only.
const watcher = socket.channels.get('fidelity:modes', { params: { modes: 'subscribe' } });
await watcher.attach();
result.modes = watcher.modes;
result.params = watcher.params;
try {
  await watcher.publish('n', 'not allowed');
  result.publishError = null;
} catch (err) {
  result.publishError = err.code;
}
const plain = socket.channels.get('fidelity:plain', { params: { nonexistent: 'foo' } });
await plain.attach();
result.defaultModes = plain.modes;
result.unknownParamsEchoed = plain.params;

// A name starting with ':' is not a channel.
const invalid = socket.channels.get(':hell');
try {
  await invalid.attach();
  result.invalidName = 'attached';
} catch (err) {
  result.invalidName = { code: err.code, state: invalid.state };
}

// Recover: same connection id, a new key (RTN16d); the original client then gets a fresh one.
const original = socket.connection.id;
const originalKey = socket.connection.key;
const recovered = new Ably.Realtime(clientOptions({ clientId: 'socket', recover: socket.connection.createRecoveryKey() }));
await recovered.connection.once('connected');
result.recoveredSameId = recovered.connection.id === original;
result.recoveredNewKey = recovered.connection.key !== originalKey;
recovered.close();
socket.close();
done(result);
