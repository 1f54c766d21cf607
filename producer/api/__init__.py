"""The HTTP API and web console (`svdq api`, extra `api`): a producer over HTTP.

Every route works through the same `Client` the CLI uses (one producer code path); what is
added here is only what HTTP needs: tokens (tokens.py), per-token limits and ownership
(limits.py), request parsing (requests.py), the event fan-out for SSE (hub.py), errors as
problem+json (problems.py), metrics and body caps (middleware.py) and the routes (app.py,
routes.py, batches.py). No module here imports torch.
"""
