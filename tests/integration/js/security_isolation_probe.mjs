// ably-js (Node) holding PROBE_TOKEN (another user's Django-minted JWT) tries every way into
// PROBE_CHANNEL and PROBE_LIST_CHANNEL; prints the Ably error code of each attempt (null = allowed).
import Ably from 'ably';
import { clientOptions, done } from './ably_env.mjs';

// presence.enter() attaches implicitly; when that attach is refused ably-js also rejects its
// internal attach promise, which nobody can await. Record such 40160s instead of dying on them.
const stray = [];
process.removeAllListeners('unhandledRejection');
process.on('unhandledRejection', (err) => {
  if (err?.code !== 40160) {
    console.error(err);
    process.exit(1);
  }
  stray.push(err.code);
});

const options = clientOptions({ token: process.env.PROBE_TOKEN });
delete options.key;
const channelName = process.env.PROBE_CHANNEL;

async function codeOf(attempt) {
  try {
    await attempt();
    return null;
  } catch (err) {
    return err.code ?? String(err);
  }
}

// Each realtime attempt on its own connection: a channel that already failed to attach would
// refuse the next operation locally (90001) instead of asking the server.
async function onFreshConnection(attempt) {
  const client = new Ably.Realtime(options);
  await client.connection.once('connected');
  try {
    return await codeOf(() => attempt(client));
  } finally {
    client.close();
  }
}

const rest = new Ably.Rest(options);
const main = new Ably.Realtime(options);
await main.connection.once('connected');

const result = {
  clientId: main.auth.clientId,
  attach: await codeOf(() => main.channels.get(channelName).subscribe(() => {})),
  publish: await onFreshConnection((c) => c.channels.get(channelName).publish('prompt', 'hi')),
  presenceEnter: await onFreshConnection((c) => c.channels.get(channelName).presence.enter('x')),
  history: await codeOf(() => rest.channels.get(channelName).history()),
  presenceGet: await codeOf(() => rest.channels.get(channelName).presence.get()),
  restPublish: await codeOf(() => rest.channels.get(channelName).publish('prompt', 'hi')),
  listChannel: await codeOf(() => main.channels.get(process.env.PROBE_LIST_CHANNEL).attach()),
  stillConnected: main.connection.state === 'connected',
};
main.close();
done(result);
