"""Which jobs already have a result.json, for many jobs at once.

Asking S3 once per job (HEAD results/<id>/result.json) costs a round trip each: 10 000 jobs
Redis has forgotten would take over a minute against a slow server. Instead, the first time
a bulk run needs to know, list the results folder once (1 000 keys per request) and answer
from that set. A folder too large to hold (over LIMIT results) falls back to one HEAD per job.
"""

from __future__ import annotations

from svdq.shared.constants import RESULT_FILE, result_dir, result_key
from svdq.shared.spec import JobSpec
from svdq.shared.storage import ObjectStore

LIMIT = 500_000  # ids held at most per results folder (about 40 MB); beyond it, HEAD per job


class DoneIndex:
    """Answers "does this job's result.json exist?" from one listing per results folder."""

    def __init__(self, store: ObjectStore, limit: int = LIMIT) -> None:
        self.store = store
        self.limit = limit
        self._folders: dict[str, set[str] | None] = {}  # None: too big or not listable

    def done(self, spec: JobSpec) -> bool:
        """Whether result.json exists for `spec` (as of this run's listing of its folder)."""
        assert spec.job_id
        root = result_dir("", spec.output_prefix)  # "results/" or "<prefix>/results/"
        if root not in self._folders:
            self._folders[root] = self._list(root)
        ids = self._folders[root]
        if ids is None:
            return bool(self.store.exists(result_key(spec.job_id, spec.output_prefix)))
        return spec.job_id in ids

    def _list(self, root: str) -> set[str] | None:
        ids: set[str] = set()
        for key in self.store.list_prefix(root):
            job_id, _, name = key[len(root) :].partition("/")
            if name == RESULT_FILE:
                ids.add(job_id)
                if len(ids) > self.limit:
                    return None
        return ids
