"""Tests: keygen and the bucket-wide tools (fsck, rekey), engines and command lines."""
