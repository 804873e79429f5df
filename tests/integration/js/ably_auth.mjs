// ably-js auth flows against the stand-in: TokenRequest exchange, authUrl, JWT with user claims,
// bad key, capability denials, in-band re-auth narrowing the capability, clientId mismatch.
import http from 'node:http';
import { createHmac } from 'node:crypto';
import Ably from 'ably';
import { clientOptions, waitFor, done } from './ably_env.mjs';

const [keyName, keySecret] = process.env.ABLY_KEY.split(':');
const noKey = (extra) => { const o = clientOptions(extra); delete o.key; return o; };
const keyed = new Ably.Rest(clientOptions());

function makeJwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ typ: 'JWT', alg: 'HS256', kid: keyName });
  const body = b64({ iat: now, exp: now + 3600, 'x-ably-capability': '{"*":["*"]}', ...claims });
  const sig = createHmac('sha256', keySecret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

async function connected(client) {
  await client.connection.once('connected');
  return client;
}

async function failure(promise) {
  try { await promise; return null; } catch (err) { return err.code; }
}

const results = {};

// 1. TokenRequest exchange through authCallback.
const viaTokenRequest = await connected(new Ably.Realtime(noKey({
  authCallback: (params, cb) => keyed.auth.createTokenRequest({ clientId: 'tok' }).then((tr) => cb(null, tr), cb),
})));
results.tokenRequestClientId = viaTokenRequest.auth.clientId;

// 2. authUrl serving a TokenRequest as JSON.
const server = http.createServer(async (req, res) => {
  const tokenRequest = await keyed.auth.createTokenRequest({ clientId: 'url-user' });
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(tokenRequest));
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const viaAuthUrl = await connected(new Ably.Realtime(noKey({
  authUrl: `http://127.0.0.1:${server.address().port}/auth`,
})));
results.authUrlClientId = viaAuthUrl.auth.clientId;
server.close();

// 3. JWT with a channel user claim, stamped onto extras.userClaim.
const jwtClient = await connected(new Ably.Realtime(noKey({
  authCallback: (params, cb) => cb(null, makeJwt({ 'x-ably-clientId': 'jwt-user', 'ably.channel.ai:*': 'pro' })),
})));
results.jwtClientId = jwtClient.auth.clientId;
const claims = [];
await viaTokenRequest.channels.get('ai:claims').subscribe((m) => claims.push(m.extras?.userClaim));
await jwtClient.channels.get('ai:claims').publish('prompt', 'hi');
await waitFor(() => claims.length, 'the JWT client message');
results.userClaim = claims[0];

// 4. A wrong secret fails the connection.
const badKey = new Ably.Realtime({ ...clientOptions(), key: `${keyName}:wrong` });
await badKey.connection.once('failed');
results.badKeyCode = badKey.connection.errorReason.code;

// 5. Capability denials.
let capability = { 'ai:one': ['subscribe'], 'ai:two': ['*'] };
const limited = await connected(new Ably.Realtime(noKey({
  authCallback: (params, cb) => keyed.auth
    .createTokenRequest({ clientId: 'lim', capability: JSON.stringify(capability) })
    .then((tr) => cb(null, tr), cb),
})));
results.attachDenied = await failure(limited.channels.get('ai:denied').attach());
const one = limited.channels.get('ai:one');
await one.attach();
results.publishDenied = await failure(one.publish('x', 'y'));
const two = limited.channels.get('ai:two');
await two.attach();

// 6. In-band re-auth with a narrower capability fails the channel no longer allowed.
capability = { 'ai:one': ['subscribe'] };
await limited.auth.authorize();
await waitFor(() => two.state === 'failed', 'ai:two to fail after re-auth');
results.afterReauth = { one: one.state, two: two.state, twoCode: two.errorReason?.code,
  connection: limited.connection.state };

// 7. A token bound to one clientId cannot connect as another.
const tokenDetails = await keyed.auth.requestToken({ clientId: 'x' });
const mismatch = new Ably.Realtime(noKey({ token: tokenDetails.token, clientId: 'y' }));
await mismatch.connection.once('failed');
results.mismatchCode = mismatch.connection.errorReason.code;

done(results);
