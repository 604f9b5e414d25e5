"""The local cache: ciphertext copies of objects, dirty layers and the journal."""
