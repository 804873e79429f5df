// ably-js REST against the stand-in: publish, mutable messages over PATCH, versions, channel
// status, batch publish/presence, presence history, and inband occupancy on a realtime channel.
import Ably from 'ably';
import { clientOptions, waitFor, done } from './ably_env.mjs';

const useBinaryProtocol = process.env.ABLY_FORMAT !== 'json';
const rest = new Ably.Rest(clientOptions({ useBinaryProtocol, clientId: 'rest-user' }));
const channel = rest.channels.get('ai:rest-js');
const { serials } = await channel.publish('response', 'Hel');
const serial = serials[0];
const appended = await channel.appendMessage({ serial, data: 'lo' });
const updated = await channel.updateMessage({ serial, data: 'Hello!' }, { description: 'fix' });
const latest = await channel.getMessage(serial);
const versions = await channel.getMessageVersions(serial);

const batch = await rest.batchPublish({ channels: ['ai:b1', 'ai:b2'], messages: [{ name: 'n', data: 'batched' }] });
const b1 = await rest.channels.get('ai:b1').history();

const realtime = new Ably.Realtime(clientOptions({ useBinaryProtocol, clientId: 'member' }));
const occupancy = [];
const watched = realtime.channels.get('ai:occupied', { params: { occupancy: 'metrics' } });
await watched.subscribe('[meta]occupancy', (m) => occupancy.push(m.data.metrics));
await watched.presence.enter('here');
await waitFor(() => occupancy.some((m) => m.presenceMembers === 1), 'occupancy with the member');
const presence = await rest.batchPresence(['ai:occupied', 'ai:empty']);
const status = await rest.channels.get('ai:occupied').status();
const presenceHistory = await rest.channels.get('ai:occupied').presence.history();
realtime.close();

done({
  appendVersion: appended.versionSerial,
  updateVersion: updated.versionSerial,
  latest: { action: latest.action, data: latest.data, version: latest.version?.serial },
  versions: versions.items.map((v) => [v.action, v.data]),
  batch: { success: batch.successCount, failure: batch.failureCount, channels: batch.results.map((r) => r.channel) },
  b1: b1.items.map((m) => m.data),
  occupancy: occupancy.at(-1),
  batchPresence: presence,
  status: { active: status.status.isActive, members: status.status.occupancy.metrics.presenceMembers },
  presenceHistory: presenceHistory.items.map((p) => [p.action, p.clientId]),
});
