"""The long-running parts: ingest (now), persistor, worker and api (later issues)."""
