"""steppe.ingest: the write side. gRPC stream in, validation, WAL, memtable, Parquet, catalog.

Must not import steppe.query.
"""
