// ably-js meets the stand-in's production limits and the channel lifecycle metachannel.
import { createHmac } from 'node:crypto';
import Ably from 'ably';
import { clientOptions, waitFor, done } from './ably_env.mjs';

const [keyName, keySecret] = process.env.ABLY_KEY.split(':');
function makeJwt(capability) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ typ: 'JWT', alg: 'HS256', kid: keyName });
  const body = b64({ iat: now, exp: now + 3600, 'x-ably-capability': JSON.stringify(capability) });
  return `${head}.${body}.${createHmac('sha256', keySecret).update(`${head}.${body}`).digest('base64url')}`;
}
const codeOf = async (promise) => { try { await promise; return null; } catch (err) { return err.code; } };
const results = {};

// Lifecycle: a watcher with channel-metadata on [meta]* sees channels open and close.
const watcherOptions = clientOptions({ token: makeJwt({ '[meta]*': ['channel-metadata'] }) });
delete watcherOptions.key;
const watcher = new Ably.Realtime(watcherOptions);
const lifecycle = [];
await watcher.channels.get('[meta]channel.lifecycle').subscribe((m) => lifecycle.push([m.name, m.data.channelId]));
const plainOptions = clientOptions({ token: makeJwt({ '*': ['*'] }) });
delete plainOptions.key;
const plain = new Ably.Realtime(plainOptions);
results.lifecycleDeniedCode = await codeOf(plain.channels.get('[meta]channel.lifecycle').attach());

const client = new Ably.Realtime(clientOptions({ clientId: 'busy', transportParams: { appendRollupWindow: 0 } }));
const watched = client.channels.get('ai:watched');
await watched.attach();
await watched.detach();
await waitFor(() => lifecycle.length >= 2, 'channel.opened and channel.closed');
results.lifecycle = lifecycle;

// Inbound rate: 5 msg/s here, so 3 of 8 concurrent publishes are refused.
const channel = client.channels.get('ai:limits');
await channel.attach();
const outcomes = await Promise.all([...Array(8).keys()].map((i) => codeOf(channel.publish('n', String(i)))));
results.rateCodes = outcomes.filter((code) => code !== null);
await new Promise((r) => setTimeout(r, 1100));

// Size: ably-js adopts maxMessageSize from connectionDetails.
results.sizeCode = await codeOf(channel.publish('n', 'x'.repeat(70000)));
// Appends count the concatenated size (checked by the server).
const { serials } = await channel.publish('response', 'x'.repeat(40000));
results.appendTooBigCode = await codeOf(channel.appendMessage({ serial: serials[0], data: 'y'.repeat(30000) }));

// Channels per connection: watched was detached, limits is attached; two more hit the cap of 3.
await client.channels.get('ai:second').attach();
await client.channels.get('ai:third').attach();
results.channelLimitCode = await codeOf(client.channels.get('ai:fourth').attach());
done(results);
