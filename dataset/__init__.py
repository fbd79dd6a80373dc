"""The dataset domain: layout, IDX and PNG parsing, fingerprinting, ingestion into
content-addressed TFRecord shards, the content caches and their gc, seeding.

Stands on ``core`` only; services and workflows build on it.
"""
