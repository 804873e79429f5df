// Enters presence and then waits to be killed (the test simulates a vanished device).
import Ably from 'ably';
import { clientOptions, emit } from './ably_env.mjs';

const client = new Ably.Realtime(clientOptions({ clientId: process.env.CLIENT_ID || 'phone' }));
const channel = client.channels.get(process.env.CHANNEL || 'room');
await channel.presence.enter({ device: 'phone' });
emit({ entered: true, connectionId: client.connection.id });
setInterval(() => {}, 1000);
