"""Which jobs are already done, for many jobs at once.

Asking S3 once per job (HEAD results/<id>/result.json) costs a round trip each: 10 000 jobs
Redis has forgotten would take over a minute against a slow server. Instead, the first time
a bulk run needs to know, list the results folder once (1 000 keys per request) and answer
from that set. A folder too large to hold (over LIMIT results) falls back to one HEAD per job.

A result.json in the listing is only a candidate: it is believed as the worker believes it
(shared/records.read_result: it parses, names this job, its outputs are there with their
recorded sizes), at one GET and a HEAD per output for each job that looks done. A damaged or
foreign one means "not done": the job is sent again and its worker sets the marker aside.
"""

from __future__ import annotations

import logging

from svdq.shared.constants import RESULT_FILE, result_dir, result_key
from svdq.shared.records import read_result
from svdq.shared.spec import JobSpec
from svdq.shared.storage import ObjectStore

log = logging.getLogger("svdq.producer")

LIMIT = 500_000  # ids held at most per results folder (about 40 MB); beyond it, HEAD per job


class DoneIndex:
    """Answers "does this job have a valid result.json?" from one listing per results folder
    and a read of the markers it lists."""

    def __init__(self, store: ObjectStore, limit: int = LIMIT) -> None:
        self.store = store
        self.limit = limit
        self._folders: dict[str, set[str] | None] = {}  # None: too big or not listable

    def done(self, spec: JobSpec) -> bool:
        """Whether `spec`'s result.json exists (as of this run's listing of its folder) and is
        valid; an invalid one is logged and counts as absent."""
        assert spec.job_id
        # "results/" or "<prefix>/results/" (result_dir("") ends in "//": a job id's place)
        root = result_dir("", spec.output_prefix).rstrip("/") + "/"
        if root not in self._folders:
            self._folders[root] = self._list(root)
        ids = self._folders[root]
        if ids is None:
            listed = bool(self.store.exists(result_key(spec.job_id, spec.output_prefix)))
        else:
            listed = spec.job_id in ids
        if not listed:
            return False
        record, problem = read_result(self.store, spec.job_id, spec.output_prefix)
        if problem is not None:
            log.warning("job %s: result.json is not valid (%s): sent again", spec.job_id, problem)
        return record is not None

    def _list(self, root: str) -> set[str] | None:
        ids: set[str] = set()
        for key in self.store.list_prefix(root):
            job_id, _, name = key[len(root) :].partition("/")
            if name == RESULT_FILE:
                ids.add(job_id)
                if len(ids) > self.limit:
                    return None
        return ids
