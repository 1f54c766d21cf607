"""svdq's contract: job and result records, settings, names, storage, image checks, errors.

Nothing here imports the producer or the worker, and nothing here imports torch.
"""

SCHEMA_VERSION = 1
