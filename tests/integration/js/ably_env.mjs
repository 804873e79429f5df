// Shared by the ably-js scripts the Python tests run: client options for the stand-in under test.
export function clientOptions(extra = {}) {
  const base = JSON.parse(process.env.ABLY_OPTIONS || '{}');
  return { key: process.env.ABLY_KEY, ...base, ...extra };
}

// Resolve when `predicate()` holds, or fail loudly instead of hanging.
export async function waitFor(predicate, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export function done(result) {
  console.log(JSON.stringify(result));
  process.exit(0);
}

process.on('unhandledRejection', (err) => {
  console.error(err);
  process.exit(1);
});

// Conversation with the Python test (NodeSession): print a JSON line, read a JSON line.
export function emit(value) {
  console.log(JSON.stringify(value));
}

let stdinLines = null;
export async function input() {
  if (!stdinLines) {
    const { createInterface } = await import('node:readline');
    stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  }
  const { value, done: ended } = await stdinLines.next();
  if (ended) throw new Error('stdin closed before the test answered');
  return JSON.parse(value);
}
