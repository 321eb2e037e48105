"""`shepherd serve`: shepherd's authenticated HTTP API, its own Prometheus metrics and its JSON logs.

    app.py        the FastAPI application: routers, error mapping, /healthz, /readyz, /metrics
    auth.py       bearer tokens on each request: 401 without a valid one, 403 below the role needed
    tokens.py     the tokens in SQL: made once, kept only as SHA-256, revoked by id
    schemas.py    the response and request bodies (the OpenAPI schema is built from them)
    reads.py      status, history, rollouts with their steps, decisions, probe windows, fleet health
    actions.py    promote / rollback / pin / unpin, through control_plane.manual (as the CLI does)
    admin.py      token management over the API (admin)
    queries.py    the few reads of the history the Store does not have
    metrics.py    the process's counters (fed by `observe_pass`), the stable-version gauges, the leader hook
    logs.py       text or JSON log lines, with tokens, keys and passwords masked
    client.py     `shepherd promote|rollback|pin --server URL`
    server.py     uvicorn on a socket bound first, beside the scheduler when asked

Nothing is imported here, so `control_plane.api.metrics` and `control_plane.api.logs` are cheap to
import from the scheduler.
"""
