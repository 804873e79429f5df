// Token expiry while connected: the test moves the stand-in's clock past the token's expiry;
// the SDK must renew through authCallback and carry on with the same connection.
import Ably from 'ably';
import { clientOptions, waitFor, emit, input, done } from './ably_env.mjs';

const keyed = new Ably.Rest(clientOptions());
let callbacks = 0;
const options = clientOptions({
  authCallback: (params, cb) => {
    callbacks += 1;
    keyed.auth.createTokenRequest({ clientId: 'expiring', ttl: 60000 }).then((tr) => cb(null, tr), cb);
  },
});
delete options.key;
const client = new Ably.Realtime(options);
await client.connection.once('connected');
const connectionId = client.connection.id;
const states = [];
client.connection.on((change) => states.push([change.current, change.reason?.code ?? null]));
emit({ connectionId });
await input();
await waitFor(() => callbacks >= 2 && client.connection.state === 'connected', 'renewal');
done({ callbacks, sameConnection: client.connection.id === connectionId, states });
