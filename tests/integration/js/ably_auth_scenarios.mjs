// ably-js auth/capability scenarios against the stand-in; `node ably_auth_scenarios.mjs <name>`.
// Each scenario prints one JSON object of observations; the Python test asserts on it.
import { createHmac } from 'node:crypto';
import http from 'node:http';
import Ably from 'ably';
import { clientOptions, done } from './ably_env.mjs';

const KEY = process.env.ABLY_KEY;
const [KEY_NAME, KEY_SECRET] = KEY.split(':');
const TIMEOUT_MS = 10000;

function b64url(value) {
  return Buffer.from(value).toString('base64url');
}

// An Ably JWT as a customer's server would mint it (HS256, kid = key name).
function makeJwt({ ttlS = 3600, capability = { '*': ['*'] }, clientId, secret = KEY_SECRET, extra = {} } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ typ: 'JWT', alg: 'HS256', kid: KEY_NAME }));
  const claims = { iat: now, exp: now + ttlS, 'x-ably-capability': JSON.stringify(capability), ...extra };
  if (clientId) claims['x-ably-clientId'] = clientId;
  const body = b64url(JSON.stringify(claims));
  const signature = createHmac('sha256', secret).update(`${header}.${body}`).digest('base64url');
  return `${header}.${body}.${signature}`;
}

function withTimeout(promise, what, ms = TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function once(emitter, event, what, ms = TIMEOUT_MS) {
  return withTimeout(new Promise((resolve) => emitter.once(event, resolve)), what || event, ms);
}

async function connected(realtime) {
  if (realtime.connection.state !== 'connected') await once(realtime.connection, 'connected', 'connected');
  return realtime;
}

async function errorOf(promise) {
  try {
    await withTimeout(promise, 'operation');
    return null;
  } catch (err) {
    if (err.code === undefined) return { message: String(err && err.message), name: err && err.name };
    return { code: err.code, statusCode: err.statusCode };
  }
}

function reason(change) {
  return change && change.reason ? { code: change.reason.code, statusCode: change.reason.statusCode } : null;
}

function keyRest() {
  return new Ably.Rest(clientOptions());
}

// A token-auth realtime client whose authCallback hands out what `next()` returns.
function callbackRealtime(next, extra = {}) {
  const calls = [];
  const realtime = new Ably.Realtime(
    clientOptions({
      key: undefined,
      authCallback: (tokenParams, callback) => {
        calls.push(tokenParams);
        Promise.resolve(next(calls.length, tokenParams)).then(
          (token) => callback(null, token),
          (err) => callback(err, null),
        );
      },
      ...extra,
    }),
  );
  return { realtime, calls };
}

const scenarios = {
  async key_auth() {
    const realtime = new Ably.Realtime(clientOptions({ clientId: 'kim' }));
    await connected(realtime);
    const channel = realtime.channels.get('js:basic');
    const received = new Promise((resolve) => channel.subscribe((m) => resolve(m)));
    await channel.publish('hello', 'from a key holder');
    const message = await withTimeout(received, 'message');
    const result = { method: realtime.auth.method, clientId: realtime.auth.clientId, received: message.clientId };
    realtime.close();
    return result;
  },

  async bad_keys() {
    const results = {};
    for (const [label, key] of [
      ['wrongSecret', `${KEY_NAME}:notTheSecret`],
      ['unknownKey', 'this.is:wrong'],
    ]) {
      const realtime = new Ably.Realtime(clientOptions({ key }));
      const change = await once(realtime.connection, 'failed', label);
      results[label] = reason(change);
      realtime.close();
    }
    return results;
  },

  async token_request_callback() {
    const rest = keyRest();
    const capability = { 'js:tr:*': ['publish', 'subscribe'] };
    const { realtime, calls } = callbackRealtime(() =>
      rest.auth.createTokenRequest({ clientId: 'tr', capability }),
    );
    await connected(realtime);
    const allowed = realtime.channels.get('js:tr:room');
    await allowed.publish('ok', 'allowed');
    const denied = await errorOf(realtime.channels.get('js:elsewhere').attach());
    const result = {
      method: realtime.auth.method,
      clientId: realtime.auth.clientId,
      capability: JSON.parse(realtime.auth.tokenDetails.capability),
      calls: calls.length,
      denied,
      deniedChannelState: realtime.channels.get('js:elsewhere').state,
      stillConnected: realtime.connection.state,
    };
    realtime.close();
    return result;
  },

  async auth_url() {
    const rest = keyRest();
    const seen = [];
    const server = http.createServer(async (req, res) => {
      const url = new URL(req.url, 'http://localhost');
      seen.push({ path: url.pathname, clientId: url.searchParams.get('clientId') });
      if (url.pathname === '/token-request') {
        const tokenRequest = await rest.auth.createTokenRequest({ clientId: url.searchParams.get('clientId') });
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(tokenRequest));
      } else if (url.pathname === '/jwt') {
        res.writeHead(200, { 'content-type': 'application/jwt' });
        res.end(makeJwt({ clientId: url.searchParams.get('clientId') }));
      } else {
        res.writeHead(404);
        res.end();
      }
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const base = `http://127.0.0.1:${server.address().port}`;
    const results = { seen };
    for (const path of ['/token-request', '/jwt']) {
      const realtime = new Ably.Realtime(clientOptions({ key: undefined, authUrl: base + path, clientId: 'url-user' }));
      await connected(realtime);
      const channel = realtime.channels.get('js:authurl');
      await channel.attach();
      results[path] = { clientId: realtime.auth.clientId, method: realtime.auth.method, channel: channel.state };
      realtime.close();
    }
    server.close();
    return results;
  },

  async expiry_and_renewal() {
    // A JWT and an Ably token, each about two seconds from expiry, renewed by their callbacks.
    const rest = keyRest();
    const clients = {
      jwt: callbackRealtime((n) => makeJwt({ ttlS: n === 1 ? 2 : 3600, clientId: 'exp' })),
      token: callbackRealtime((n, params) => rest.auth.requestToken({ ...params, ttl: n === 1 ? 2000 : 3600000 })),
    };
    const results = {};
    await Promise.all(
      Object.entries(clients).map(async ([label, { realtime, calls }]) => {
        await connected(realtime);
        const change = await once(realtime.connection, 'disconnected', `${label} expiry`);
        await connected(realtime);
        results[label] = { reason: reason(change), calls: calls.length, state: realtime.connection.state };
        realtime.close();
      }),
    );
    return results;
  },

  async expired_at_connect() {
    const { realtime, calls } = callbackRealtime((n) => makeJwt({ ttlS: n === 1 ? -10 : 3600 }));
    const changes = [];
    realtime.connection.on((change) => changes.push({ current: change.current, reason: reason(change) }));
    await connected(realtime);
    const result = { calls: calls.length, changes };
    realtime.close();
    return result;
  },

  async token_request_errors() {
    const rest = keyRest();
    const now = await rest.time();
    const nonce = { timestamp: now, nonce: '1234567890123456' };
    await rest.auth.requestToken({ ...nonce });
    const wrongKeyRest = new Ably.Rest(clientOptions({ key: `${KEY_NAME}:notTheSecret` }));
    return {
      badMac: await errorOf(rest.auth.requestToken({ mac: '12345' })),
      wrongSecret: await errorOf(wrongKeyRest.auth.requestToken()),
      staleTimestamp: await errorOf(rest.auth.requestToken({ timestamp: now - 30 * 60 * 1000 })),
      replayedNonce: await errorOf(rest.auth.requestToken({ ...nonce })),
      excessiveTtl: await errorOf(rest.auth.requestToken({ ttl: 365 * 24 * 60 * 60 * 1000 })),
      negativeTtl: await errorOf(rest.auth.requestToken({ ttl: -1 })),
      invalidCapability: await errorOf(rest.auth.requestToken({ capability: { channel0: ['publish_'] } })),
      emptyIntersection: await errorOf(rest.auth.requestToken({ capability: { '[meta]channel.lifecycle': ['subscribe'] } })),
    };
  },

  async capabilities() {
    const rest = keyRest();
    const capability = { 'js:ro': ['subscribe'], 'js:pub': ['publish', 'subscribe'], 'js:hist': ['history'] };
    const { realtime } = callbackRealtime(() => rest.auth.createTokenRequest({ clientId: 'cap', capability }));
    await connected(realtime);
    const readOnly = realtime.channels.get('js:ro');
    await readOnly.attach();
    const results = {
      publishReadOnly: await errorOf(readOnly.publish('no', 'x')),
      enterWithoutPresence: await errorOf(realtime.channels.get('js:pub').presence.enter('x')),
      attachUngranted: await errorOf(realtime.channels.get('js:none').attach()),
      publishAllowed: await errorOf(realtime.channels.get('js:pub').publish('ok', 'y')),
    };
    results.connection = realtime.connection.state;
    realtime.close();
    const tokenRest = new Ably.Rest(
      clientOptions({ key: undefined, authCallback: (p, cb) => rest.auth.createTokenRequest({ capability }).then((tr) => cb(null, tr), cb) }),
    );
    results.restHistoryDenied = await errorOf(tokenRest.channels.get('js:ro').history());
    results.restPublishDenied = await errorOf(tokenRest.channels.get('js:ro').publish('no', 'x'));
    results.restHistoryAllowed = await errorOf(tokenRest.channels.get('js:hist').history());
    return results;
  },

  async client_id_binding() {
    const rest = keyRest();
    const bound = await rest.auth.requestToken({ clientId: 'alice' });
    const mismatched = new Ably.Realtime(clientOptions({ key: undefined, token: bound.token, clientId: 'WRONG' }));
    const failed = await once(mismatched.connection, 'failed', 'clientId mismatch');
    mismatched.close();
    const inherited = new Ably.Realtime(clientOptions({ key: undefined, token: bound.token }));
    await connected(inherited);
    const inheritedClientId = inherited.auth.clientId;
    inherited.close();
    const wildcard = await rest.auth.requestToken({ clientId: '*' });
    const chooser = new Ably.Realtime(clientOptions({ key: undefined, token: wildcard.token, clientId: 'chosen' }));
    await connected(chooser);
    const channel = chooser.channels.get('js:wild');
    const received = new Promise((resolve) => channel.subscribe((m) => resolve(m)));
    await channel.publish('hi', 'x');
    const message = await withTimeout(received, 'wildcard message');
    const result = {
      mismatch: reason(failed),
      inheritedClientId,
      wildcardClientId: chooser.auth.clientId,
      wildcardMessageClientId: message.clientId,
    };
    chooser.close();
    return result;
  },

  async user_claims() {
    const { realtime } = callbackRealtime(() =>
      makeJwt({ clientId: 'mo', extra: { 'ably.channel.js:claims:*': 'moderator' } }),
    );
    await connected(realtime);
    const claimed = realtime.channels.get('js:claims:room');
    const unclaimed = realtime.channels.get('js:plain');
    const first = new Promise((resolve) => claimed.subscribe((m) => resolve(m)));
    const second = new Promise((resolve) => unclaimed.subscribe((m) => resolve(m)));
    await claimed.publish('say', 'hi');
    await unclaimed.publish('say', 'hi');
    const [a, b] = await withTimeout(Promise.all([first, second]), 'claimed messages');
    realtime.close();
    return { claimed: (a.extras || {}).userClaim ?? null, unclaimed: (b.extras || {}).userClaim ?? null };
  },

  async renew_before_expiry() {
    // Ably asks a client to re-authenticate (AUTH) ~30 s before its token expires, so a client
    // with an authCallback renews in place: an 'update', never a 'disconnected'.
    const { realtime, calls } = callbackRealtime((n) => makeJwt({ ttlS: n === 1 ? 20 : 3600 }));
    const states = [];
    realtime.connection.on((change) => states.push(change.current));
    await connected(realtime);
    // The AUTH is due at once (the token has less than 30 s left), so 5 s is ample.
    await once(realtime.connection, 'update', 'update after a server-requested AUTH', 5000);
    const result = { calls: calls.length, states };
    realtime.close();
    return result;
  },

  async revoke_tokens() {
    const created = await fetch(`${process.env.ABLY_ENDPOINT}/apps`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ keys: [{ revocableTokens: true }] }),
    }).then((response) => response.json());
    const rest = new Ably.Rest(clientOptions({ key: created.keys[0].keyStr }));
    const [one, two] = await Promise.all([
      rest.auth.requestToken({ clientId: 'revoked-1' }),
      rest.auth.requestToken({ clientId: 'kept-2' }),
    ]);
    const revokedClient = new Ably.Realtime(clientOptions({ key: undefined, token: one }));
    const keptClient = new Ably.Realtime(clientOptions({ key: undefined, token: two }));
    await Promise.all([connected(revokedClient), connected(keptClient)]);
    const disconnected = once(revokedClient.connection, 'disconnected', 'revocation disconnect');
    const batch = await rest.auth.revokeTokens([
      { type: 'clientId', value: 'revoked-1' },
      { type: 'invalidType', value: 'abc' },
    ]);
    const change = await disconnected;
    const result = {
      successCount: batch.successCount,
      failureCount: batch.failureCount,
      targets: batch.results.map((r) => r.target),
      invalidStatus: batch.results[1].error && batch.results[1].error.statusCode,
      reason: reason(change),
      kept: keptClient.connection.state,
    };
    revokedClient.close();
    keptClient.close();
    return result;
  },

  async reauth_narrow() {
    const rest = keyRest();
    const capabilities = [{ 'js:keep': ['*'], 'js:lose': ['*'] }, { 'js:keep': ['*'] }];
    const { realtime, calls } = callbackRealtime((n) =>
      rest.auth.createTokenRequest({ clientId: 're', capability: capabilities[Math.min(n, 2) - 1] }),
    );
    await connected(realtime);
    const keep = realtime.channels.get('js:keep');
    const lose = realtime.channels.get('js:lose');
    await keep.attach();
    await lose.attach();
    const lost = once(lose, 'failed', 'lose channel failed');
    const updated = once(realtime.connection, 'update', 'connection update');
    await withTimeout(realtime.auth.authorize(), 'authorize');
    const change = await lost;
    await updated;
    const publishKeep = await errorOf(keep.publish('still', 'allowed'));
    const result = {
      calls: calls.length,
      lose: { state: lose.state, reason: reason(change) },
      keep: keep.state,
      publishKeep,
      connection: realtime.connection.state,
      capability: JSON.parse(realtime.auth.tokenDetails.capability),
    };
    realtime.close();
    return result;
  },
};

const name = process.argv[2];
if (!scenarios[name]) {
  console.error(`unknown scenario ${name}; one of ${Object.keys(scenarios).join(', ')}`);
  process.exit(2);
}
done(await scenarios[name]());
