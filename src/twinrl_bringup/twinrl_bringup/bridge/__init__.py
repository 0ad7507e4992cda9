"""fr3_bridge core: backend-agnostic command handling (envelope, arbitration, watchdog)."""
