"""hypervisord: the REST daemon, a thin shell over the engine and the repository.

    main.py     flags -> DaemonConfig -> uvicorn
    config.py   DaemonConfig from flags, HYPERSDK_* variables and a TOML file
    app.py      create_app(config): the FastAPI app (tests may run it in-process)
    models.py   pydantic request/response models (what /openapi.json shows)
    jobs.py     the SQLite job store
    runner.py   worker threads running exports, restores and verifications
    routes_*.py one module per area of the API (docs/api.md)
    errors.py   every error as {"error": {"code", "message"}}
    metrics.py  Prometheus text

Nothing here is imported by ``import hypersdk``.
"""
