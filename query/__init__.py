"""steppe.query: the read side. DuckDB over Parquet and the unflushed tail; the aiohttp app."""
