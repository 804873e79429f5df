// A device on ably-js (Node) holding DEVICE_TOKEN (a Django-minted JWT) publishes two malformed
// prompts on CHANNEL (object data with OBJECT_PROMPT_ID, and text without a promptId), then a
// good one (GOOD_PROMPT_ID). It listens to every message, as the page does, and prints the
// `refusal`s it heard and whether the good prompt was answered.
import Ably from 'ably';
import { clientOptions, done, waitFor } from './ably_env.mjs';

const options = clientOptions({ token: process.env.DEVICE_TOKEN });
delete options.key;
const client = new Ably.Realtime(options);
const channel = client.channels.get(process.env.CHANNEL);
const refusals = [];
let goodAnswered = false;

await channel.subscribe((message) => {
  const headers = (message.extras && message.extras.headers) || {};
  if (message.name === 'refusal') {
    refusals.push({
      clientId: message.clientId,
      data: message.data,
      promptId: headers.promptId ?? null,
      reason: headers.reason ?? null,
    });
  }
  if (
    message.name === 'stop' &&
    message.clientId === process.env.AGENT_CLIENT_ID &&
    headers.promptId === process.env.GOOD_PROMPT_ID
  ) {
    goodAnswered = true;
  }
});

await channel.publish({
  name: 'prompt',
  data: { text: 'an object' },
  extras: { headers: { promptId: process.env.OBJECT_PROMPT_ID } },
});
await channel.publish({ name: 'prompt', data: 'no id', extras: { headers: {} } });
await channel.publish({
  name: 'prompt',
  data: 'Say exactly: fine.',
  extras: { headers: { promptId: process.env.GOOD_PROMPT_ID } },
});
await waitFor(() => refusals.length >= 2 && goodAnswered, 'two refusals and an answer', 30000);
client.close();
done({ refusals, goodAnswered });
