"""The daemon's SQLite workspace database: ledger, history, queue, status file."""
