"""What `svdq wait --batch` and `svdq status` say of jobs Redis lost (producer/lost.py), in
process against the real Redis and S3 server: a batch that lost one job's record, a job found
in a bulk journal, and a job no journal lists. The whole path through a restarted no-AOF
redis-server, the printed command and a worker is tests/faults/test_lost_state.py."""

from __future__ import annotations

import pytest
import redis as redis_lib

from svdq.producer.bulk import BulkSubmitter
from svdq.producer.journal import BatchJournal, journal_path, resubmit_command
from svdq.producer.lost import lost_batch, unknown_job
from svdq.producer.manifest import iter_source
from svdq.shared.constants import job_key, result_dir
from tests.integration.helpers import make_image

pytestmark = pytest.mark.integration

# svd: no test worker consumes that queue; the queued messages are removed below.
SPEC = {"variant": "svd", "num_frames": 2, "num_inference_steps": 1, "width": 64, "height": 64}


def test_a_batch_missing_one_job_record_names_it_and_the_command(
    client, store, redis_url, tmp_path
):
    folder = tmp_path / "photos"
    for i in range(2):
        make_image(folder / f"p{i}.png", (80, 64 + 8 * i), color=200 + i)
    batch = "lost-jobs-b1"
    journal = BatchJournal(client.settings, batch, str(folder))
    bulk = BulkSubmitter(client.jobqueue, batch_id=batch, journal=journal, keep_ids=True)
    summary = bulk.run(iter_source(folder, SPEC), str(folder))
    journal.close()
    r = redis_lib.Redis.from_url(redis_url)
    for key in [*r.scan_iter("svdq.svd:*"), "svdq.svd"]:
        r.delete(key)
    kept, lost_id = summary.job_ids
    path = journal_path(client.settings, batch)
    written = path.read_text()

    # A re-run into the batch appends nothing: each job is in the journal once.
    again = BatchJournal(client.settings, batch, "elsewhere")
    again.add(spec.to_dict() for spec in bulk.specs.values())
    again.close()
    assert path.read_text() == written and written.count("\n") == 2

    assert lost_batch(client.jobqueue, batch) is None  # nothing lost yet
    r.delete(job_key(lost_id))  # a failover lost this job's record
    lost = lost_batch(client.jobqueue, batch)
    assert lost is not None
    assert (lost.record_gone, lost.jobs, lost.lost) == (False, 2, 1)
    assert lost.states == {"queued": 1, "unknown": 1} and lost.source == str(folder)
    assert lost.command == resubmit_command(path, batch)
    assert "1 of its jobs have no record in Redis and no result.json" in lost.text()
    assert lost.text().endswith(lost.command)

    note = unknown_job(client.jobqueue, lost_id)
    line = next(n for n, text in enumerate(written.splitlines(), 1) if lost_id in text)
    assert f"its record is gone: Redis lost state? It is in batch {batch}" in note
    assert f"line {line} of {path}" in note and "is in the store" in note
    assert note.endswith(lost.command)
    assert "it was running" not in note
    store.put_bytes(result_dir(lost_id) + "clip.mp4", b"half", "video/mp4")
    try:
        assert "the store holds outputs of it (clip.mp4): it was running" in unknown_job(
            client.jobqueue, lost_id
        )
    finally:
        store.delete(result_dir(lost_id) + "clip.mp4")
    assert kept != lost_id


def test_a_job_no_journal_lists_says_where_its_spec_was(client):
    note = unknown_job(client.jobqueue, "never-seen-job-0001")
    assert "Redis has no record of it and the store no result.json" in note
    assert "Its spec was kept only in Redis" in note
    assert str(client.settings.batch_dir) in note and "svdq submit IMAGE" in note


def test_a_batch_unknown_everywhere_says_what_it_may_be(svdq_env, monkeypatch, capsys):
    """No record in Redis, no journal here: never submitted, expired, lost elsewhere; exit 2."""
    from svdq.producer.cli import main

    for name, value in svdq_env.items():
        monkeypatch.setenv(name, value)
    assert main(["wait", "--batch", "never-made-b7"]) == 2
    err = capsys.readouterr().err
    assert "batch 'never-made-b7' is unknown here" in err and "no journal of it" in err
    assert "--batch-id never-made-b7" in err
