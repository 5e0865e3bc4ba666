"""The service deployed on this machine, for the tests and the benchmarks alike: free ports,
throwaway servers (a `redis-server`, a Postgres cluster, an `mlflow server`), databases of
one's own on a shared Postgres, and the service's own processes (the API server, Celery
workers) started as they are deployed, each in a session of its own, and stopped.

Why a package of its own: the tests (`tests/`, not installed) and the benchmarks
(`benchmarks/`, installed) both start the service, and this is the one place that says
how. It sits above `store/` (it reads `Settings` and migrates stores) and beside `api/`
and `worker/`, which it starts as processes by module name and never imports; nothing of
the service imports it (tests/test_layers.py holds both).

- `local_deployment.servers`: free ports, throwaway servers, stopping a process session;
- `local_deployment.processes`: the API server and workers, as deployed;
- `local_deployment.databases`: databases of one's own on a shared Postgres server.
"""
