"""The filesystem: POSIX semantics over the cache and the store, with no FUSE import."""
