"""twinrl_policy."""
