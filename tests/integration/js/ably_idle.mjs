// Idle timeout: the stand-in goes silent on our socket (a half-open connection). With no
// HEARTBEAT within maxIdleInterval + realtimeRequestTimeout the SDK must drop the transport,
// resume, and recover what was published meanwhile.
import Ably from 'ably';
import { clientOptions, waitFor, emit, input, done } from './ably_env.mjs';

const client = new Ably.Realtime(clientOptions({ clientId: 'idle', realtimeRequestTimeout: 1000 }));
const channel = client.channels.get('ai:idle');
const received = [];
const states = [];
await channel.subscribe((m) => received.push(m.data));
client.connection.on((change) => states.push(change.current));
const connectionId = client.connection.id;
emit({ connectionId });
await input();
await waitFor(() => received.length >= 2, 'messages published during the silence', 20000);
done({ received, states, sameConnection: client.connection.id === connectionId });
