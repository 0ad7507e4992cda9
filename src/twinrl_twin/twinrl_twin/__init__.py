"""twinrl_twin."""
