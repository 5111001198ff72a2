"""Blobs on disk plus their SQLite index.

Import from the submodules (store.store, store.scan, ...): this package stays empty so that
`ls` and `du` can import their queries without paying for SQLAlchemy (see database.py).
"""
