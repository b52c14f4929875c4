"""The webhook endpoint: what a git server's post-receive hook (or a forge's webhook) calls when
a branch moves, so that a push starts its run at once instead of at the sensor's next poll.

- `server.py`: the HTTP endpoint (`infra webhooks serve`), which checks each call's signature;
- `push.py`: what a push starts: the branch head read by the endpoint itself, then
  `deliver_<app>` for it, launched through Dagster's GraphQL API with git_push_sensor's name and
  run key, so that the sensor (the fallback) never starts the same commit again;
- `dagster_api.py`: the GraphQL calls it makes;
- `post-receive`: the hook a git server runs (stdlib Python), installed per repository.
"""
