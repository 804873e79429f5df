// ably-js against the stand-in: publish/subscribe, echo, presence, mutable messages, history.
// Prints one JSON object describing what the SDK observed; the Python test asserts on it.
import Ably from 'ably';
import { clientOptions, waitFor, done } from './ably_env.mjs';

const useBinaryProtocol = process.env.ABLY_FORMAT !== 'json';
const suffix = useBinaryProtocol ? 'msgpack' : 'json';
const options = (extra) => clientOptions({ useBinaryProtocol, ...extra });
const alice = new Ably.Realtime(options({ clientId: 'alice', transportParams: { appendRollupWindow: 0 } }));
const bob = new Ably.Realtime(options({ clientId: 'bob' }));
const quiet = new Ably.Realtime(options({ clientId: 'quiet', echoMessages: false }));
const name = `ai:js-${suffix}`;
const aliceChannel = alice.channels.get(name);
const bobChannel = bob.channels.get(name);
const quietChannel = quiet.channels.get(name);

const bobSaw = [];
await bobChannel.subscribe((m) => bobSaw.push({
  action: m.action, name: m.name, data: m.data, id: m.id, clientId: m.clientId, serial: m.serial,
  headers: m.extras?.headers, versionSerial: m.version?.serial,
}));
const quietSaw = [];
await quietChannel.subscribe((m) => quietSaw.push(m.data));
await aliceChannel.attach();

const published = await aliceChannel.publish({ name: 'prompt', data: { text: 'hi' },
  extras: { headers: { promptId: 'p1' } } });
await quietChannel.publish('own', 'not echoed');
const reply = await aliceChannel.publish('response', '');
const serial = reply.serials[0];
await aliceChannel.appendMessage({ serial, data: 'Hello' });
const appended = await aliceChannel.appendMessage({ serial, data: ', world' }, { description: 'tokens' });
await waitFor(() => bobSaw.length >= 4, 'bob to see the create and two appends');

const edited = await aliceChannel.publish('prompt', 'typo');
await aliceChannel.updateMessage({ serial: edited.serials[0], data: 'fixed' }, { description: 'edit' });
await aliceChannel.deleteMessage({ serial: edited.serials[0] });
await waitFor(() => bobSaw.length >= 7, 'update and delete');

const presenceEvents = [];
await bobChannel.presence.subscribe((m) => presenceEvents.push(m.action));
await aliceChannel.presence.enter({ status: 'idle' });
// The enter's ACK reaches Alice; Bob's copy travels on his own socket, so wait for it.
await waitFor(() => presenceEvents.includes('enter'), 'bob to see alice enter');
const members = (await bobChannel.presence.get()).map((m) => [m.clientId, m.data]);
await aliceChannel.presence.leave();
await waitFor(() => presenceEvents.includes('leave'), 'bob to see alice leave');
const afterLeave = (await bobChannel.presence.get()).map((m) => m.clientId);

const whole = await bobChannel.getMessage(serial);
const untilAttach = await bobChannel.history({ untilAttach: true });
const history = await bobChannel.history();
const rest = new Ably.Rest(options({}));
const restChannel = rest.channels.get(name);
const page1 = await restChannel.history({ limit: 2 });
const page2 = await page1.next();
const rewound = [];
const lateClient = new Ably.Realtime(options({}));
await lateClient.channels.get(name, { params: { rewind: '2' } }).subscribe((m) => rewound.push([m.action, m.data]));
await waitFor(() => rewound.length >= 2, 'rewind backlog');

done({
  publishedSerial: published.serials[0],
  aliceConnectionId: alice.connection.id,
  bobSaw,
  quietSaw,
  appendVersion: appended.versionSerial,
  members,
  afterLeave,
  whole: { action: whole.action, data: whole.data, version: whole.version?.serial },
  untilAttach: untilAttach.items.map((m) => m.data),
  history: history.items.map((m) => [m.action, m.data]),
  page1: page1.items.map((m) => m.data),
  page2: page2.items.map((m) => m.data),
  rewound,
});
