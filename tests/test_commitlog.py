"""The commit log's reading rules: what a reader applies when LIST lags or writers race."""

from __future__ import annotations

from flowpipe.store.commitlog import Added, Entry, Snapshot


def add(writer: str, seq: int, *paths: str, remove=(), after=None) -> Entry:
    return Entry(
        writer, seq, seq, [Added(p, 10, 0, 1, 100) for p in paths], list(remove), after or {}
    )


def live(entries: list[Entry]) -> set[str]:
    snap = Snapshot()
    snap.apply({(e.writer, e.seq): e for e in entries})
    return set(snap.live)


def test_an_entry_is_applied_only_after_every_earlier_one_of_its_writer():
    # LIST shows entry 2 of w1 but not yet 1: neither counts until 1 shows
    assert live([add("w1", 2, "b")]) == set()
    assert live([add("w1", 1, "a"), add("w1", 2, "b")]) == {"a", "b"}


def test_a_compaction_waits_for_the_entries_that_added_its_inputs():
    c = add("wc", 1, "ab", remove=["a", "b"], after={"w1": 2})
    # the compaction is listed, the second input's entry not yet: a alone, never ab and a
    assert live([add("w1", 1, "a"), c]) == {"a"}
    assert live([add("w1", 1, "a"), add("w1", 2, "b"), c]) == {"ab"}


def test_two_compactions_of_the_same_inputs_count_the_rows_once():
    base = [add("w1", 1, "a"), add("w1", 2, "b")]
    x = add("x", 1, "ab-x", remove=["a", "b"], after={"w1": 2})
    y = add("y", 1, "ab-y", remove=["a", "b"], after={"w1": 2})
    assert live([*base, x, y]) in ({"ab-x"}, {"ab-y"})
    # and retention racing a compaction: the rows are gone or merged, never both
    r = add("r", 1, remove=["a"], after={"w1": 1})
    assert live([*base, x, r]) in ({"ab-x"}, {"b"})


def test_a_checkpoint_gives_the_same_state_as_the_entries():
    entries = [
        add("w1", 1, "a"),
        add("w1", 2, "b"),
        add("c", 1, "ab", remove=["a", "b"], after={"w1": 2}),
    ]
    snap = Snapshot()
    snap.apply({(e.writer, e.seq): e for e in entries[:2]})
    again = Snapshot.decode(snap.encode(5))
    again.apply({(e.writer, e.seq): e for e in entries})  # applied ones are skipped
    assert set(again.live) == {"ab"} and again.applied == {"w1": 2, "c": 1}
