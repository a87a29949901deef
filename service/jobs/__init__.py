"""Budget jobs: the SQLite store (shared by the API and the worker), the worker loop, and the
runner that searches, retrains and exports (imported only in the worker's job process)."""
