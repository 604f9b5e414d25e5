"""Object-store interface and its COS implementation."""
