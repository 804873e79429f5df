// Resume: the test drops our transport and publishes while we are away; we must get every
// missed message, in order, on the same connection.
import Ably from 'ably';
import { clientOptions, waitFor, emit, input, done } from './ably_env.mjs';

const client = new Ably.Realtime(clientOptions({ clientId: 'resumer' }));
const channel = client.channels.get('ai:resume');
const received = [];
const attachedResumed = [];
channel.on('attached', (change) => attachedResumed.push(change.resumed));
channel.on('update', (change) => attachedResumed.push(change.resumed));
await channel.subscribe((m) => received.push(m.data));
const connectionId = client.connection.id;
emit({ connectionId });
await input();
await waitFor(() => received.length >= 3, 'missed messages');
done({ received, sameConnection: client.connection.id === connectionId, attachedResumed });
