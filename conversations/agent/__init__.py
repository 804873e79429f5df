"""The asyncio agent behind `manage.py run_agent`.

Each concern has its file, and each file imports only those below it:

- `supervisor`: the `Agent` process (lease, start, janitor, sweeper, shutdown).
- `discovery`: finding conversations to attach (lifecycle events, channel listing, catch-up).
- `session`: one attached conversation (intake of prompts, cancels and regenerates, refusals,
  the queue and its worker, presence).
- `recovery`: settling replies a gone agent left (interrupted, saved but never announced).
- `reply`: one answer (`ReplyRun`), driven through a `ReplyContext`.
- `titles`, `streaming` (text onto the channel), `model` (Claude), `store` (database reads and
  the agent's units of work), `attachments`, `identity` (the agent id's lease), `pool` (Ably
  connections), `config`.
- `membership` and `control` (issue 15): which agent owns which conversation, from the agents'
  presence on the control channel.
- `ably_adapter`: the only module that imports ably-python; every SDK workaround lives there.
"""
