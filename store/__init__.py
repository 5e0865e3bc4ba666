"""The store of record and the queue: what the API and the workers both stand on."""
