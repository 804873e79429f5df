// ably-js `recover` with a connection key the stand-in never issued: a fresh connection, with the
// error Ably gives (80018, invalid connection key), rather than a failure.
import Ably from 'ably';
import { clientOptions, done } from './ably_env.mjs';

const recoveryKey = JSON.stringify({ connectionKey: 'gone!deadbeef', msgSerial: 3, channelSerials: {} });
const client = new Ably.Realtime(clientOptions({ recover: recoveryKey }));
await client.connection.once('connected');
const channel = client.channels.get('ai:recovered');
await channel.attach();
done({ code: client.connection.errorReason?.code ?? null, id: client.connection.id, channel: channel.state });
client.close();
