"""`make bench`: measures the real system on this machine (not a test)."""
