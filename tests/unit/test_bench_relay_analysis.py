"""How the relay benchmark judges what a device received against what the model emitted."""

from __future__ import annotations

import math

from bench.agent_relay import (
    AGENT_CLIENT_ID,
    EXITED_OR_ROUNDING,
    AgentShare,
    Devices,
    DeviceView,
    FloorOutcome,
    analyse_device,
    reply_text,
    shares_of,
    shares_within,
    split_by_thread,
    times_floor,
)

EXPECTED = "Hello there, world."
# The stand-in emitted three deltas, ending at these offsets, at t = 10.0, 10.1, 10.2 s.
EMISSIONS = [(10.0, 5), (10.1, 12), (10.2, len(EXPECTED))]


def view(*fragments: tuple[float, str]) -> DeviceView:
    return DeviceView(fragments=[(t, text, None, False) for t, text in fragments])


def test_coalesced_fragments_in_order_are_intact_and_timed_per_delta():
    received = view((10.05, "Hello there,"), (10.25, " world."))
    latencies, lost, duplicated, reordered, repaired = analyse_device(
        received, EXPECTED, EMISSIONS, seq_per_delta=False
    )
    assert (lost, duplicated, reordered, repaired) == (0, 0, 0, 0)
    # Delta 1 and 2 arrived with the first message, delta 3 with the second.
    assert [round(v) for v in latencies] == [50, -50, 50]


def test_a_repeated_fragment_counts_as_duplicated():
    received = view((10.05, "Hello"), (10.06, "Hello"), (10.2, " there, world."))
    _, lost, duplicated, reordered, _ = analyse_device(
        received, EXPECTED, EMISSIONS, seq_per_delta=False
    )
    assert (lost, duplicated, reordered) == (0, 1, 0)


def test_a_missing_fragment_loses_every_delta_after_the_gap():
    received = view((10.05, "Hello"), (10.3, " world."))
    _, lost, duplicated, reordered, repaired = analyse_device(
        received, EXPECTED, EMISSIONS, seq_per_delta=False
    )
    assert (lost, duplicated, reordered, repaired) == (2, 0, 0, 0)


def test_a_fragment_arriving_after_a_later_one_counts_as_reordered():
    received = view((10.05, "Hello"), (10.2, " world."), (10.3, " there,"))
    latencies, lost, duplicated, reordered, _ = analyse_device(
        received, EXPECTED, EMISSIONS, seq_per_delta=False
    )
    assert (lost, duplicated, reordered) == (0, 0, 1)
    # The whole text was there only when the late fragment came.
    assert round(latencies[-1]) == 100


def test_a_repair_with_the_whole_text_restores_the_reply():
    received = DeviceView(
        fragments=[
            (10.05, "Hello", None, False),
            (10.3, " world.", None, False),
            (10.4, EXPECTED, None, True),
        ]
    )
    _, lost, duplicated, reordered, repaired = analyse_device(
        received, EXPECTED, EMISSIONS, seq_per_delta=False
    )
    assert (lost, duplicated, reordered, repaired) == (0, 0, 0, 1)


def test_per_delta_sequence_numbers_expose_loss_duplicates_and_reordering():
    received = DeviceView(
        fragments=[
            (10.01, "Hello", 0, False),
            (10.25, " world.", 2, False),
            (10.26, " world.", 2, False),
        ]
    )
    latencies, lost, duplicated, reordered, _ = analyse_device(
        received, EXPECTED, EMISSIONS, seq_per_delta=True
    )
    assert (lost, duplicated, reordered) == (1, 1, 0)
    assert len(latencies) == 2


def token(seq: int, text: str, client_id: str = AGENT_CLIENT_ID) -> dict:
    headers = {"responseId": "r-1", "promptId": "p-1", "part": "text", "seq": seq}
    return {"name": "token", "clientId": client_id, "data": text, "extras": {"headers": headers}}


def stop(status: str = "complete") -> dict:
    headers = {"responseId": "r-1", "promptId": "p-1", "status": status}
    return {"name": "stop", "clientId": AGENT_CLIENT_ID, "data": "", "extras": {"headers": headers}}


def test_a_device_shows_the_reply_the_product_folds_and_still_counts_delivery_defects():
    devices = Devices(1)
    devices.channel_index = {"ai:x": 0}
    on_message = devices.listener(0)
    # Raw wire messages as rawably hands them over: a fragment late, one twice, one forged.
    for at, message in [
        (10.05, token(0, "Hello")),
        (10.2, token(2, " world.")),
        (10.21, token(1, " there,", client_id="someone")),
        (10.3, token(1, " there,")),
        (10.31, token(1, " there,")),
        (10.4, stop()),
    ]:
        on_message(at, "ai:x", message)
    view = devices.views[(0, 0)]
    # The fold shows the whole reply, in seq order, once: what the page shows.
    assert (view.text, view.stop_status, view.stopped_at) == (EXPECTED, "complete", 10.4)
    assert devices.remaining == 1  # the other device of the conversation saw nothing
    # Judged by seq in arrival order, the late fragment and the doubled one still count.
    _, lost, duplicated, reordered, _ = analyse_device(
        view, EXPECTED, EMISSIONS, seq_per_delta=True
    )
    assert (lost, duplicated, reordered) == (0, 1, 1)


def test_reply_texts_are_unique_per_conversation_and_sized_in_tokens():
    from emulators.anthropic.core import count_tokens

    texts = {reply_text(index, 200) for index in range(300)}
    assert len(texts) == 300
    assert all(195 <= count_tokens(text) <= 210 for text in texts)


def test_the_runner_writes_a_runs_output_into_the_docs_block(tmp_path):
    from bench.__main__ import RESULTS_END, RESULTS_START, write_docs

    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\n{RESULTS_START}\nold\n{RESULTS_END}\n\n## Method\n")
    write_docs(docs, ["# make bench: today\n", "SUMMARY x: fine\n"])
    text = docs.read_text()
    assert "old" not in text
    assert "```text\n# make bench: today\nSUMMARY x: fine\n```" in text
    assert text.endswith("## Method\n")


def test_cpu_is_split_into_event_loop_database_and_the_rest_by_thread():
    pid = 100
    before = {100: ("python", 1.0), 101: ("agent-db", 0.5), 102: ("uvloop_0", 0.1)}
    after = {
        100: ("python", 3.0),
        101: ("agent-db", 1.5),
        102: ("uvloop_0", 0.3),
        103: ("uvloop_1", 0.2),  # started during the run: counts from zero
    }
    # The process total also holds 0.1 s of a thread that exited during the run.
    split = split_by_thread(pid, before, after, total_seconds=3.5)
    assert (split.loop, split.database) == (2.0, 1.0)
    assert math.isclose(split.other, 0.5)
    # Numbered workers are grouped under one name; the remainder is named for what it is.
    assert set(split.other_by_name) == {"uvloop", EXITED_OR_ROUNDING}
    assert math.isclose(split.other_by_name["uvloop"], 0.4)
    assert math.isclose(split.other_by_name[EXITED_OR_ROUNDING], 0.1)


def test_an_unnamed_database_thread_leaves_its_time_in_other():
    after = {100: ("python", 1.0), 101: ("python", 2.0)}
    split = split_by_thread(100, {}, after, total_seconds=3.0)
    assert (split.loop, split.database, split.other) == (1.0, 0.0, 2.0)


def test_the_agent_is_measured_in_multiples_of_its_floor():
    floor = FloorOutcome(conversations=2, tokens=1_000, cpu_seconds=0.02, intact=2, wall_seconds=4)
    assert math.isclose(floor.cpu_us_per_token, 20.0)
    assert math.isclose(times_floor(50.0, floor), 2.5)
    # No floor, or a floor that measured no CPU: no ratio rather than an infinite one.
    assert math.isnan(times_floor(50.0, None))
    idle = FloorOutcome(conversations=2, tokens=1_000, cpu_seconds=0.0, intact=2, wall_seconds=4)
    assert math.isnan(times_floor(50.0, idle))


def test_a_database_executor_named_by_its_thread_name_prefix_counts_as_the_database():
    # ThreadPoolExecutor(thread_name_prefix="agent-db") names its worker `agent-db_0`.
    after = {100: ("python", 1.0), 101: ("agent-db_0", 2.0)}
    split = split_by_thread(100, {}, after, total_seconds=3.0)
    assert (split.loop, split.database, split.other) == (1.0, 2.0, 0.0)


def agent(attached: int, messages: int) -> AgentShare:
    return AgentShare("a", attached, messages, 0, attached, attached * 100, attached * 0.1)


def test_each_agents_share_is_its_fraction_of_the_work_or_of_the_agents_sum():
    agents = [agent(20, 25), agent(25, 25), agent(15, 50)]
    assert [round(share, 3) for share in shares_of(agents, "attached", 60)] == [0.333, 0.417, 0.25]
    assert [round(share, 2) for share in shares_of(agents, "messages_received")] == [
        0.25,
        0.25,
        0.5,
    ]


def test_shares_are_within_tolerance_only_when_every_agent_is_near_one_kth():
    # 1/3 +- 10% of the total: 23.3% .. 43.3%.
    assert shares_within([agent(20, 25), agent(25, 25), agent(15, 50)], "attached", 60)
    assert not shares_within([agent(20, 25), agent(25, 25), agent(15, 50)], "messages_received")
    # One agent carrying everything while the other idles is outside.
    assert not shares_within([agent(30, 1), agent(0, 1)], "attached", 30)
    # Two agents that each attached every conversation: 100% each of the work, not 1/2.
    assert not shares_within([agent(30, 30), agent(30, 30)], "attached", 30)
    assert not shares_within([], "attached")
