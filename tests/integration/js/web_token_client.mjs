// ably-js (Node) authenticating through Django's /ably/token with a session cookie, the way the
// browser does: attach OWN_CHANNEL, try OTHER_CHANNEL, report what happened.
import Ably from 'ably';
import { clientOptions, done } from './ably_env.mjs';

const options = clientOptions({
  authUrl: process.env.TOKEN_URL,
  authHeaders: { Cookie: process.env.SESSION_COOKIE },
});
delete options.key;
const client = new Ably.Realtime(options);

async function attachError(name) {
  try {
    await client.channels.get(name).attach();
    return null;
  } catch (err) {
    return err.code ?? String(err);
  }
}

await client.connection.once('connected');
const result = {
  clientId: client.auth.clientId,
  ownAttachError: await attachError(process.env.OWN_CHANNEL),
  otherAttachError: await attachError(process.env.OTHER_CHANNEL),
};
client.close();
done(result);
