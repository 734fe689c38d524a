"""The `apt market` client: the HTTP API, and installs into the running environment that are
validated in the sandbox, recorded in a local state database and cached for offline rollback."""
