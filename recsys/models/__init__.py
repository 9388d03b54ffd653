"""Models as artifacts and as loaded objects: the versioned, checksummed repository on disk and in
SQL, the per-process runtime (lazy loading, preloading, warm-up, hot swap, memory budget),
micro-batching, the learned serving profile, and retention."""
