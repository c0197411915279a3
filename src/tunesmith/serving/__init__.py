"""`tunesmith serve`: an OpenAI-compatible server with many adapters, continuous batching and a
web page. Needs the `serve` extra (FastAPI, uvicorn); nothing else in tunesmith imports it."""
