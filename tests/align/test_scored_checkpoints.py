"""align/scored_checkpoints.py: the files asynchronous validation and its scorer share."""
from __future__ import annotations

import json

from align.scored_checkpoints import (checkpoints_to_delete, enqueue, keep_scored_up_to, pending_jobs, read_delivered,
                                      read_scored, rotate, write_delivered)


def test_read_scored_skips_a_line_cut_short_and_turns_null_into_nan(tmp_path):
    (tmp_path / "evals.jsonl").write_text('{"step": 0, "eval_ais_auc": 0.1, "eval_lis_efficiency": null}\n'
                                          'not json\n{"step": 2, "eval_ais_auc": 0.2}\n{"step": 4, "eval_ais')
    entries = read_scored(tmp_path)
    assert [e["step"] for e in entries] == [0, 2]
    assert entries[0]["eval_lis_efficiency"] != entries[0]["eval_lis_efficiency"]  # NaN
    assert read_scored(tmp_path / "missing") == []


def test_keep_scored_up_to_drops_the_steps_a_resumed_run_retrains(tmp_path):
    lines = [json.dumps({"step": s, "eval_ais_auc": s / 10}) for s in (0, 2, 4, 6)]
    (tmp_path / "evals.jsonl").write_text("\n".join(lines) + "\n")
    keep_scored_up_to(tmp_path, 4)
    assert [e["step"] for e in read_scored(tmp_path)] == [0, 2, 4]


def test_queue_jobs_come_back_oldest_step_first(tmp_path):
    for step in (10, 2, 0):
        enqueue(tmp_path, step, tmp_path / f"checkpoint-{step}")
    assert [job["step"] for job in pending_jobs(tmp_path)] == [0, 2, 10]
    assert pending_jobs(tmp_path)[1]["checkpoint"].endswith("checkpoint-2")


def test_retention_never_deletes_the_unscored_the_best_or_the_newest():
    steps = [2, 4, 6, 8, 10]
    # Everything scored, best at 4, limit 2: keep 10 (newest) and 4 (best), delete the rest oldest first.
    assert checkpoints_to_delete(steps, 2, scored=set(steps), best=4) == [2, 6, 8]
    # The scorer lags: 8 and 10 are unscored, so only 2 and 6 may go, whatever the limit.
    assert checkpoints_to_delete(steps, 1, scored={2, 4, 6}, best=4) == [2, 6]
    assert checkpoints_to_delete(steps, 2, scored={2, 4, 6}, best=4) == [2, 6]
    assert checkpoints_to_delete(steps, None, scored=set(steps), best=4) == []
    assert checkpoints_to_delete(steps, 5, scored=set(steps), best=None) == []


def test_rotate_deletes_folders_and_the_delivered_record_round_trips(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert rotate(tmp_path, 1, scored={2, 4, 6}, best=2) == [4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-6"]
    write_delivered(tmp_path / "checkpoint-6", {4, 2, 0})
    assert read_delivered(tmp_path / "checkpoint-6") == {0, 2, 4}
    assert read_delivered(tmp_path / "checkpoint-2") == set()
