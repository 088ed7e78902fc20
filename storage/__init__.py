"""Storage and imaging core: index (SQL), blob store, ingest, codecs. Knows nothing of HTTP."""
