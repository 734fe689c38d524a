"""The marketplace server (needs `apt-marketplace[server]`): a FastAPI app over SQLAlchemy and
a content-addressed blob store. Nothing here imports apt-core; plugins are data to the server."""
